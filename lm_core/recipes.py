"""One recipe for a training run: from (corpus, tokenizer, preset, overrides, run folder) to a
ready :class:`~lm_core.train.Trainer`. The ``train`` command and the app's Train page both call
:func:`build_trainer`, so a run is built the same way wherever it starts.

What it decides, once: the preset's values under explicit overrides, the tokenizer (trained on
the text), the initial weights (seeded by the run's seed, the same on every DDP rank; or a
pretrained model's, ``init_from``, as nanoGPT's fine-tuning does, with its own tokenizer), which
parameters train (``freeze``), a text without a corpus spec kept with its run (``corpus.txt``),
the interval policy, the n-gram baselines of the text (``baselines.json``, for new runs and
runs that lack them), and resume: ``resume=True`` continues the run in ``run_dir`` and accepts
settings equal to the run's (the same command line again, with ``--resume``), refusing any real
change with ``old → new``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import runs as R
from .config import ModelConfig, TrainConfig
from .presets import Preset, get_preset, preset_configs
from .train import RESUME_MAY_CHANGE, Callback, Trainer

log = logging.getLogger("lm_core.recipes")

DEFAULT_CORPUS = "builtin:python-docs"
DEFAULT_BPE_VOCAB = 512
INTERVALS = ("as_given", "live")
FINETUNE_MAX_BLOCK = 1024       # a pretrained context longer than this is cut to it unless block_size is given
FINETUNE_MODEL_FIELDS = ("block_size", "dropout")  # what a fine-tuning run may change in the pretrained model
BASELINE_MAX_CHARS = 20_000_000  # n-gram baselines of a longer text would hold up the start
BASELINE_MAX_VOCAB = 4096        # ... and of a larger vocabulary (a pretrained BPE's) too


def live_intervals(train: Mapping[str, Any]) -> dict[str, Any]:
    """The interval policy for a run someone watches (the app): scaled to ``max_steps``, so a
    short run still logs ~50 rows, evaluates ~8 times and checkpoints, and its warmup fits it."""
    over = dict(train)
    steps = int(over.get("max_steps", TrainConfig().max_steps))
    over["eval_interval"] = max(10, min(int(over.get("eval_interval", 250)), max(10, steps // 8)))
    over["log_interval"] = max(1, min(10, steps // 50 or 1))
    over["checkpoint_interval"] = max(50, min(int(over.get("checkpoint_interval", 500)), steps))
    over["warmup_steps"] = min(int(over.get("warmup_steps", 100)), max(0, steps // 10))
    lr = float(over.get("learning_rate", TrainConfig().learning_rate))
    over["min_lr"] = min(float(over.get("min_lr", 1e-4)), lr)
    return over


def build_trainer(corpus: str | None = None, tokenizer_kind: str | None = None, *,
                  preset: str | None = None, model_overrides: Mapping[str, Any] | None = None,
                  train_overrides: Mapping[str, Any] | None = None,
                  run_dir: str | os.PathLike[str] | None = None, resume: bool = False, overwrite: bool = False,
                  vocab_size: int | None = None, corpus_text: str | None = None, intervals: str = "as_given",
                  init_from: str | None = None, revision: str | None = None, freeze: str | None = None,
                  on_step: Callback | None = None, on_eval: Callback | None = None,
                  on_end: Callback | None = None) -> Trainer:
    """A ready trainer (not started) for a new run, or for continuing the run in ``run_dir``.

    ``corpus``: a corpus spec (:func:`lm_core.load_corpus`); default the preset's, else
    ``builtin:python-docs``. ``corpus_text``: the text itself, already loaded; without a
    ``corpus`` spec (an upload, a paste) it is kept in the run folder as ``corpus.txt``, whose
    path becomes the spec, so the run can be resumed.
    ``tokenizer_kind``: ``char`` or ``bpe`` (default the preset's, else ``char``);
    ``vocab_size`` is BPE's (default the preset's, else 512). ``preset``: a name in
    :data:`lm_core.presets.PRESETS`; ``model_overrides`` / ``train_overrides`` (ModelConfig /
    TrainConfig fields; ``None`` values ignored) win over it. ``intervals="live"`` scales the
    log, evaluation and checkpoint intervals to ``max_steps`` (:func:`live_intervals`).
    ``overwrite`` replaces a run already in ``run_dir``; without it such a folder is refused.
    ``resume`` continues ``run_dir`` exactly: everything given must equal the run's settings,
    except :data:`lm_core.train.RESUME_MAY_CHANGE`. Bad settings raise ``ValueError``.

    ``init_from`` (fine-tuning): a pretrained model, anything :func:`lm_core.load_pretrained`
    takes (a hub name such as ``"gpt2"`` at ``revision``, or a folder), whose weights start the
    run and whose tokenizer it uses (saved in the run folder); no preset, tokenizer kind or
    model shape may be given then, except ``block_size`` (default the model's context, at most
    :data:`FINETUNE_MAX_BLOCK`; learned positions are cropped) and ``dropout``. ``freeze``:
    ``"embeddings"`` or ``"all-but-last:K"`` (see :func:`lm_core.config.parse_freeze`); frozen
    parameters stay out of the optimizer. Both are kept in the run's TrainConfig, so a resume
    repeats them. The trainer's ``baselines`` holds the text's n-gram baselines (``[]`` when
    skipped: a text over 20 MB or a vocabulary over 4096 tokens).
    """
    if intervals not in INTERVALS:
        raise ValueError(f"intervals must be one of {', '.join(INTERVALS)}, got {intervals!r}")
    p = get_preset(preset) if preset else None
    mo = {k: v for k, v in (model_overrides or {}).items() if v is not None and k != "vocab_size"}
    to = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    to.update({k: v for k, v in (("init_from", init_from), ("init_revision", revision), ("freeze", freeze))
               if v is not None})
    callbacks = dict(on_step=on_step, on_eval=on_eval, on_end=on_end)
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run folder to continue (run_dir / --out)")
        trainer = _resume(Path(run_dir), p, corpus, tokenizer_kind, vocab_size, corpus_text, mo, to, callbacks)
        if trainer.folder is not None and (trainer.run_dir / R.BASELINES_FILE).exists():
            trainer.baselines = R.read_baselines(trainer.run_dir)
        else:
            _add_baselines(trainer)
        return trainer
    if init_from is not None:
        return _finetune(init_from, revision, p, corpus, corpus_text, tokenizer_kind, vocab_size, mo, to,
                         run_dir, overwrite, intervals, callbacks)
    if revision is not None:
        raise ValueError("--revision picks a revision of the --init-from model; give --init-from too")
    if corpus_text is None:
        corpus = corpus or (p.corpus if p else DEFAULT_CORPUS)
    elif not corpus_text:
        raise ValueError("the training text is empty; choose a corpus with some text in it")
    kind = tokenizer_kind or (p.tokenizer if p else "char")
    if kind not in ("char", "bpe"):
        raise ValueError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")
    if kind == "char" and vocab_size is not None:
        raise ValueError("--vocab-size applies to --tokenizer bpe only; a char tokenizer's vocabulary is "
                         "the text's distinct characters")
    folder = Path(run_dir) if run_dir is not None else None
    if folder is not None:
        _make_room(folder, overwrite)
    text = corpus_text if corpus_text is not None else _load(corpus)
    tok = _tokenizer(kind, text, vocab_size or (p.vocab_size if p and p.vocab_size else DEFAULT_BPE_VOCAB))
    if p is not None:
        mcfg, tcfg = preset_configs(preset, tok.vocab_size, mo, to)
    else:
        mcfg, tcfg = ModelConfig(**{**mo, "vocab_size": tok.vocab_size}), TrainConfig(**to)
    if intervals == "live":
        tcfg = TrainConfig(**live_intervals(tcfg.to_dict()))
    import torch

    from .model import GPT

    wrote = folder is not None and not folder.exists()
    try:
        if corpus is None and folder is not None:  # keep the text with the run: it can resume
            from .train.record import save_corpus_copy

            corpus = str(save_corpus_copy(folder, text))
        torch.manual_seed(tcfg.seed)  # the initial weights follow the run's seed (the same on every rank)
        trainer = Trainer(GPT(mcfg), tok, text, tcfg, folder, corpus=corpus, **callbacks)
    except BaseException:
        if wrote and folder.is_dir() and not (folder / R.CONFIG_FILE).exists():
            shutil.rmtree(folder, ignore_errors=True)  # only what this call wrote
        raise
    _add_baselines(trainer, text)
    return trainer


def _finetune(init_from: str, revision: str | None, p: Preset | None, corpus: str | None,
              corpus_text: str | None, kind: str | None, vocab_size: int | None, mo: dict[str, Any],
              to: dict[str, Any], run_dir, overwrite: bool, intervals: str, callbacks: dict) -> Trainer:
    """A new run that starts from a pretrained model's weights and tokenizer (nanoGPT's ``init_from``)."""
    if p is not None:
        raise ValueError("--preset sets a model shape and a tokenizer, but --init-from takes both from the "
                         "pretrained model; drop --preset (and give training flags such as --lr directly)")
    if kind is not None or vocab_size is not None:
        raise ValueError("--init-from uses the pretrained model's own tokenizer; drop --tokenizer / --vocab-size")
    shape = sorted(set(mo) - set(FINETUNE_MODEL_FIELDS))
    if shape:
        raise ValueError(f"--init-from keeps the pretrained model's layout; only {', '.join(FINETUNE_MODEL_FIELDS)} "
                         f"may be set, not {', '.join(shape)}")
    if corpus_text is None:
        corpus = corpus or DEFAULT_CORPUS
    elif not corpus_text:
        raise ValueError("the training text is empty; choose a corpus with some text in it")
    from .pretrained import load_pretrained

    text = corpus_text if corpus_text is not None else _load(corpus)  # a bad corpus fails before a download
    model, tok = load_pretrained(init_from, revision)
    if tok is None:
        raise ValueError(f"{init_from!r} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); "
                         f"fine-tuning needs the model's own tokenizer next to its weights")
    model = _reshape(model, mo)
    tcfg = TrainConfig(**to)
    if intervals == "live":
        tcfg = TrainConfig(**live_intervals(tcfg.to_dict()))
    folder = Path(run_dir) if run_dir is not None else None
    if folder is not None:
        _make_room(folder, overwrite)
    wrote = folder is not None and not folder.exists()
    try:
        if corpus is None and folder is not None:
            from .train.record import save_corpus_copy

            corpus = str(save_corpus_copy(folder, text))
        import torch

        torch.manual_seed(tcfg.seed)  # dropout and nothing else: the weights are the pretrained ones
        trainer = Trainer(model.train(), tok, text, tcfg, folder, corpus=corpus, **callbacks)
    except BaseException:
        if wrote and folder.is_dir() and not (folder / R.CONFIG_FILE).exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    _add_baselines(trainer, text)
    return trainer


def _reshape(model, mo: dict[str, Any]):
    """The pretrained model in float32 with ``block_size`` / ``dropout`` set (learned positions cropped)."""
    from .model import GPT

    cfg = model.config
    block = int(mo.get("block_size", min(cfg.block_size, FINETUNE_MAX_BLOCK)))
    if cfg.pos == "learned" and block > cfg.block_size:
        raise ValueError(f"block_size {block} is longer than the pretrained model's {cfg.block_size} learned "
                         f"positions; use --block-size {cfg.block_size} or less")
    new = cfg.replace(block_size=block, dropout=mo.get("dropout", cfg.dropout))
    if new == cfg:
        return model.float()
    weights = {k: v.float() for k, v in model.state_dict_for_save().items()}
    if cfg.pos == "learned":
        weights["wpe.weight"] = weights["wpe.weight"][:block].clone()  # nanoGPT's crop_block_size
    out = GPT(new)
    out.load_weights(weights)
    return out


def _add_baselines(trainer: Trainer, text: str | None = None) -> None:
    """The text's n-gram baselines on ``trainer.baselines`` and in its run folder (rank 0 only;
    skipped, with ``[]``, for a huge text or vocabulary)."""
    trainer.baselines = []
    if not trainer.is_main:
        return
    tok = trainer.tokenizer
    n_chars = len(text) if text is not None else None
    if n_chars is None:  # resumed: the splits are there already
        n_chars = int(round((len(trainer.train_split.ids) + len(trainer.val_split.ids))
                            / max(trainer.train_split.tokens_per_char, 1e-9)))
    if n_chars > BASELINE_MAX_CHARS or tok.vocab_size > BASELINE_MAX_VOCAB:
        log.debug("n-gram baselines skipped: %d characters, %d tokens in the vocabulary", n_chars, tok.vocab_size)
        return
    from .ngram import fit_ngrams, score_baselines

    try:  # the trainer's own splits: the same train/val the transformer sees
        models = fit_ngrams(trainer.train_split.ids, tok.vocab_size, max_n=4)
        trainer.baselines = score_baselines(models, trainer.train_split, trainer.val_split)
    except ValueError as e:  # a text too short for them, say
        log.debug("n-gram baselines skipped: %s", e)
        return
    if trainer.folder is not None:
        trainer.folder.write_baselines(trainer.baselines)


def _load(spec: str) -> str:
    from .corpora import load_corpus

    return load_corpus(spec)


def _tokenizer(kind: str, text: str, vocab_size: int):
    from .tokenizers import BPETokenizer, CharTokenizer

    return BPETokenizer.train(text, vocab_size=vocab_size) if kind == "bpe" else CharTokenizer.train(text)


def _make_room(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a run, or (``overwrite``) clear it, on rank 0, all ranks agreeing."""
    import torch

    from .train.dist import Ranks
    from .train.record import clear_run

    ranks = Ranks(torch.device("cpu"))
    if overwrite and ranks.is_main and (folder / R.CONFIG_FILE).exists():
        clear_run(folder)
    ranks.barrier()
    if (folder / R.CONFIG_FILE).exists():
        raise ValueError(f"{folder} already holds a run; add --resume to continue it or --overwrite to "
                         f"replace it, or choose another --out")


def _resume(folder: Path, p: Preset | None, corpus: str | None, kind: str | None, vocab_size: int | None,
            corpus_text: str | None, mo: dict[str, Any], to: dict[str, Any], callbacks: dict) -> Trainer:
    cfg = R.load_run_config(folder)
    given_model = {**(p.model if p else {}), **mo}
    given_train = {**(p.train if p else {}), **to}
    moves = []
    for name, given, old in (("corpus", corpus or (p.corpus if p and corpus_text is None else None), cfg.corpus),
                             ("tokenizer", kind or (p.tokenizer if p else None), cfg.tokenizer_kind),
                             ("vocab_size", vocab_size, cfg.model.vocab_size)):
        if given is not None and given != old:
            moves.append(f"{name}: {old!r} → {given!r}")
    for k, v in given_model.items():
        old = getattr(cfg.model, k, None)
        if old != v:
            moves.append(f"{k}: {old!r} → {v!r}")
    for k, v in given_train.items():
        old = getattr(cfg.train, k, None)
        if old != v and k not in RESUME_MAY_CHANGE:
            moves.append(f"{k}: {old!r} → {v!r}")
    if moves:
        raise ValueError(f"--resume continues the run in {folder} as it was configured, but these settings "
                         f"differ from it: {'; '.join(moves)} (only {', '.join(RESUME_MAY_CHANGE)} may change)")
    overrides = {k: v for k, v in given_train.items() if k in RESUME_MAY_CHANGE}
    return Trainer.from_run(folder, corpus_text, overrides=overrides, **callbacks)
