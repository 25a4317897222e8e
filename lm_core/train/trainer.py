"""The :class:`Trainer` façade: one object that trains, records and obeys pause/resume/stop.

It wires the parts together and owns the loop: :mod:`.step` (the optimisation),
:mod:`.record` (history, probes' results, the run folder), :mod:`.control` (status and the
worker thread), :mod:`.probes` (samples and head scores at each evaluation) and :mod:`.dist`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import runs as R
from ..config import TrainConfig
from ..data import split_text
from ..model import GPT
from .control import Control, Status
from .loop import Loop
from .dist import Ranks
from .probes import HeadScoreProbe, SampleProbe
from .record import Record, RunFolder, finite_or_none, history_columns, run_config
from .step import Stepper, configure_threads, resolve_device

log = logging.getLogger("lm_core.train")

Callback = Callable[[dict[str, Any]], Any]
# what a resumed run may change; anything else would make it another run
RESUME_MAY_CHANGE = ("max_steps", "max_seconds", "device", "num_threads", "log_interval",
                     "checkpoint_interval", "keep_resume_state")


@dataclass
class TrainSnapshot:
    """A consistent copy of a trainer's state, safe to use while training goes on."""

    status: str
    step: int
    history: pd.DataFrame
    metrics: dict[str, Any]           # the latest history row (empty before the first)
    samples: list[dict[str, Any]]     # [{"step": int, "text": str}, …]
    state_dict: dict[str, torch.Tensor] | None  # CPU copy of the weights (state_dict_for_save)
    error: str | None = None
    reason: str | None = None
    head_scores: pd.DataFrame | None = None  # step, kind, layer, head, value (see Trainer.head_scores)


def _as_list(cb: Callback | Iterable[Callback] | None) -> list[Callback]:
    return [] if cb is None else [cb] if callable(cb) else list(cb)


def _via(part: str, name: str, doc: str = "") -> property:
    """An attribute kept by one of the trainer's parts (read and write through)."""
    return property(lambda self: getattr(getattr(self, part), name),
                    lambda self, v: setattr(getattr(self, part), name, v), doc=doc)


class Trainer:
    """Train ``model`` on ``text`` (val = the last 10%) with ``config``; optionally into ``run_dir``.

    Use it step by step (``step()``, ``evaluate()``), in the foreground (``run()``, as the CLI
    does) or in the background (``start()``, ``pause()``, ``resume()``, ``stop()``) while a UI
    polls ``snapshot()``. ``run()`` evaluates once before the first step (a history row at step
    0) and draws a first sample after ``EARLY_SAMPLE_S`` seconds, so there is something to
    watch early (see :mod:`.loop`). Callbacks run in the training thread with one dict argument: ``on_step(row)``
    at each logged step, ``on_eval(row)`` after each evaluation (the row has ``sample`` too),
    ``on_end(summary)`` once when the run ends (``status``, ``reason``, ``step``, ``error``). A
    callback that raises fails the run (status ``failed``).

    With ``run_dir`` the run is saved as it goes (see :mod:`lm_core.runs`), its live status is
    kept in status.json, and requests written to its control.json (pause, resume, stop; see
    :func:`lm_core.train.control.request`) are obeyed while ``run()`` trains. A folder that
    already holds a run is refused unless ``resume=True``, which continues it exactly from its
    last checkpoint (see :meth:`from_run`).
    """

    step_count = _via("stepper", "step", "Optimizer updates done.")
    tokens_seen = _via("stepper", "tokens_seen")
    elapsed_s = _via("stepper", "elapsed_s", "Wall time while running, evaluations included, pauses not.")
    last_finite_loss = _via("stepper", "last_finite_loss")
    optimizer = _via("stepper", "optimizer")
    amp_dtype = _via("stepper", "amp_dtype")
    distributed = _via("ranks", "distributed")
    rank = _via("ranks", "rank")
    world_size = _via("ranks", "world_size")
    is_main = _via("ranks", "is_main")
    samples = _via("record", "samples", "[{'step', 'text'}] at each evaluation (and one early).")

    def __init__(self, model: GPT, tokenizer, text: str, config: TrainConfig,
                 run_dir: str | os.PathLike[str] | None = None, *, corpus: str | None = None,
                 resume: bool = False, on_step: Callback | Iterable[Callback] | None = None,
                 on_eval: Callback | Iterable[Callback] | None = None,
                 on_end: Callback | Iterable[Callback] | None = None) -> None:
        if not isinstance(model, GPT):
            raise ValueError(f"Trainer needs an lm_core.GPT model, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise ValueError(f"Trainer needs a TrainConfig, got {type(config).__name__}")
        vs = getattr(tokenizer, "vocab_size", None)
        # a pretrained model may have more embeddings than its tokenizer has tokens (padded tables)
        if vs != model.config.vocab_size and not (config.init_from and isinstance(vs, int)
                                                  and vs < model.config.vocab_size):
            raise ValueError(f"the tokenizer has {vs} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}; build the model with vocab_size=tokenizer.vocab_size")
        if resume and run_dir is None:
            raise ValueError("resume=True needs the run_dir to resume from")
        self.config, self.tokenizer, self.corpus, self.model = config, tokenizer, corpus, model
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            # TF32 tensor cores for the fp32 matrix products that autocast leaves (nanoGPT does the same)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.on_step, self.on_eval, self.on_end = _as_list(on_step), _as_list(on_eval), _as_list(on_end)
        self.ranks = Ranks(self.device)  # set up by the CLI under torchrun: each rank its own data stream
        model.to(self.device)
        self.train_split, self.val_split = split_text(text, tokenizer, model.config.block_size)
        self.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self._lock = threading.RLock()       # the records and the weights, shared with readers
        self._step_lock = threading.Lock()   # one step at a time, whoever drives it
        self.stepper = Stepper(model, config, self.device, self.ranks, self.train_split.ids,
                               self.val_split.ids, self._lock)
        self.columns = history_columns(list(self.stepper.groups))
        self.record = Record(self.columns, self._lock)
        self._sample_probe = SampleProbe(tokenizer, text, config.sample_tokens, config.seed)
        self._head_probe = HeadScoreProbe(tokenizer)
        self.baselines: list[dict[str, Any]] = []  # the text's n-gram baselines (set by lm_core.recipes)
        self.best_val_loss, self.best_step, self._evals_since_best = math.inf, None, 0
        self.checkpoint_step = 0             # the step of the last checkpoint written (or resumed from)
        self.num_threads: int | None = None
        self._early_sample_due = False
        self.control = Control(on_change=lambda status: self._write_status())
        self.loop = Loop(self)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.folder = RunFolder(self.run_dir, self.is_main) if self.run_dir is not None else None
        self._snapshot_plan = set(R.snapshot_steps(config.max_steps, config.snapshots))
        self._created = R.now_iso()
        if self.folder is not None:
            self._load_checkpoint() if resume else self._init_run_dir()

    # ------------------------------------------------------------------ the run folder

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], text: str | None = None, *,
                 overrides: dict[str, Any] | None = None, **kwargs) -> Trainer:
        """Continue the run in ``run_dir`` exactly from its last checkpoint.

        The model, tokenizer and TrainConfig come from the folder; the text is re-read from the
        corpus spec in config.json unless given. ``overrides`` may change the settings in
        :data:`RESUME_MAY_CHANGE` (values equal to the run's are accepted); any other change
        is refused naming ``old → new``. A different ``max_steps`` changes the learning-rate
        schedule, so the continuation is then no longer the uninterrupted run.
        """
        from ..tokenizers import load_tokenizer

        cfg = R.load_run_config(run_dir)
        tc = cfg.train
        changed = {k: v for k, v in (overrides or {}).items()
                   if v is not None and (not hasattr(tc, k) or getattr(tc, k) != v)}
        bad = sorted(set(changed) - set(RESUME_MAY_CHANGE))
        if bad:
            moves = "; ".join(f"{k}: {getattr(tc, k, None)!r} → {changed[k]!r}" for k in bad)
            raise ValueError(f"a resumed run keeps its settings, but these differ from the run's: {moves} "
                             f"(only {', '.join(RESUME_MAY_CHANGE)} may change)")
        tc = tc.replace(**changed)
        tok_path = Path(run_dir) / R.TOKENIZER_FILE
        try:
            tok = load_tokenizer(tok_path)
        except ValueError as e:
            raise ValueError(str(e) if str(tok_path) in str(e) else f"{tok_path}: {e}") from None
        if text is None:
            if not cfg.corpus:
                raise ValueError(f"{Path(run_dir) / R.CONFIG_FILE} names no corpus; pass the training text")
            from ..corpora import load_corpus

            text = load_corpus(cfg.corpus)
        return cls(GPT(cfg.model), tok, text, tc, run_dir, corpus=cfg.corpus, resume=True, **kwargs)

    def _init_run_dir(self) -> None:
        if self.folder.holds_run():
            raise ValueError(f"{self.run_dir} already holds a run; resume it (--resume / resume=True), "
                             f"choose another folder, or pass --overwrite to replace it")
        self.ranks.barrier()  # every rank has checked before rank 0 writes anything
        self.folder.create(self.tokenizer, self.record)
        if 0 in self._snapshot_plan:
            self.folder.save_snapshot(0, self.model.state_dict_for_save())
        self._save_checkpoint(state="idle")

    def _run_config(self, state: str, **status: Any) -> R.RunConfig:
        st = {"state": state, "step": self.step_count, "checkpoint_step": self.checkpoint_step,
              "last_finite_loss": self.last_finite_loss, "best_val_loss": finite_or_none(self.best_val_loss),
              "best_step": self.best_step, "world_size": self.world_size, **status}
        if self.control.error:
            st["message"] = self.control.error
        if self.control.reason:
            st["reason"] = self.control.reason
        return run_config(self.model.config, self.config, self.tokenizer.kind, self.corpus, self.text_sha256,
                          self._created, st)

    def _save_checkpoint(self, state: str, resumable: bool = True, **status: Any) -> None:
        if self.folder is None or not self.is_main:
            return
        self.checkpoint_step = s = self.step_count
        weights = self.model.state_dict_for_save()
        if not resumable:  # a slim finished folder: weights, no optimizer state
            cfg = self._run_config(state, resumable=False, **status)
            return self.folder.save_weights_only(s, weights, self.record, cfg)
        st = {"step": s, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed_s,
              "best_val_loss": finite_or_none(self.best_val_loss), "best_step": self.best_step,
              "evals_since_best": self._evals_since_best, "last_finite_loss": self.last_finite_loss,
              "world_size": self.world_size, "n_params": len(self.stepper.params)}
        self.folder.save_checkpoint(weights, self.stepper.optimizer_state(), st, self.record,
                                    self._run_config(state, **status))

    def save_checkpoint(self) -> None:
        """Write a checkpoint now (a no-op without ``run_dir``); safe between steps."""
        with self._lock:
            st = self.control.status
            self._save_checkpoint(state=st if st != Status.IDLE else "stopped")

    def _load_checkpoint(self) -> None:
        d = self.run_dir
        cfg = R.load_run_config(d)
        if cfg.model != self.model.config:
            raise ValueError(f"{d / R.CONFIG_FILE} describes a different model ({cfg.model}) than "
                             f"the one given ({self.model.config}); resume with the run's own model")
        if cfg.corpus_sha256 and cfg.corpus_sha256 != self.text_sha256:
            raise ValueError(f"the training text differs from the one the run in {d} was trained on "
                             f"(corpus {cfg.corpus!r}, sha256 {cfg.corpus_sha256[:12]}…); resume with the same text")
        where = d / R.RESUME_FILE
        weights, state, st = R.load_resume(where, len(self.stepper.params))
        try:
            self.model.load_weights(weights)
        except ValueError as e:
            raise ValueError(f"{where} does not fit the model: {e}") from None
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{where} holds optimizer state that does not fit: {e}") from None
        self.step_count = self.checkpoint_step = step = int(st["step"])
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.elapsed_s = float(st.get("elapsed_s", 0.0))
        bv = st.get("best_val_loss")
        self.best_val_loss = float(bv) if bv is not None else math.inf
        self.best_step = st.get("best_step")
        self._evals_since_best = int(st.get("evals_since_best", 0))
        self.last_finite_loss = st.get("last_finite_loss")
        self._created = cfg.created
        self.record.load(d, upto=step)  # history, samples, head scores as the checkpoint saw them
        self.folder.drop_after(step, self.best_step, self.record)
        if step >= self.config.max_steps:
            self.control.to(Status.FINISHED, reason="max_steps")
        log.info("resumed %s at step %d", d, step)

    def _write_status(self) -> None:
        if self.folder is not None:
            c = self.control
            self.folder.write_status(c.status, self.step_count, self.config.max_steps,
                                     eta_s=self.stepper.eta_s(), reason=c.reason, error=c.error)

    # ------------------------------------------------------------------ reading (any thread)

    @property
    def status(self) -> Status:
        """idle, running, paused, stopping, stopped, finished, diverged or failed (a ``str``)."""
        return self.control.status

    @property
    def error(self) -> str | None:
        """What went wrong, in a sentence, when the status is diverged or failed."""
        return self.control.error

    @property
    def reason(self) -> str | None:
        """Why the run ended: max_steps, max_seconds, early_stopping, stopped, diverged, failed."""
        return self.control.reason

    @property
    def history(self) -> pd.DataFrame:
        """One row per logged step (a copy): the columns of :attr:`columns`."""
        return self.record.frame()

    @property
    def latest(self) -> dict[str, Any]:
        """The latest history row (empty before the first)."""
        return self.record.latest()

    @property
    def head_scores(self) -> pd.DataFrame:
        """Probe head scores at each evaluation: columns step, kind, layer, head, value (see
        :class:`lm_core.train.probes.HeadScoreProbe`): how circuits are watched forming."""
        with self._lock:
            return R.head_scores_frame(list(self.record.head_records))

    def snapshot(self, weights: bool = True) -> TrainSnapshot:
        """History, latest metrics, samples and (with ``weights``) a CPU copy of the weights.

        Thread-safe: the weights are copied between optimizer steps, never half updated, and
        the lock is held only for the copies (the DataFrame is built after).
        """
        with self._lock:
            rows = list(self.record.rows)
            sd = ({k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict_for_save().items()}
                  if weights else None)
            head = list(self.record.head_records)
            snap = dict(status=self.control.status, step=self.step_count, samples=list(self.record.samples),
                        error=self.control.error, reason=self.control.reason)
        return TrainSnapshot(history=self.record.frame(rows), metrics=dict(rows[-1]) if rows else {},
                             state_dict=sd, head_scores=R.head_scores_frame(head), **snap)

    def configure_threads(self) -> int:
        """Set torch's CPU thread count for training and return it (no-op off the CPU):
        ``TrainConfig.num_threads`` if set, else every core divided among the DDP ranks here."""
        self.num_threads = configure_threads(self.device, self.config.num_threads, self.ranks.local_world_size)
        return self.num_threads

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): see :func:`lm_core.train.step.lr_at`."""
        return self.stepper.lr_at(step)

    def evaluate(self, time_budget_s: float | None = None) -> dict[str, float]:
        """Validation loss: mean over ``eval_iters`` fixed batches of the held-out split.

        The batches are the same at every evaluation (their own seeded stream), so the curve
        shows the model changing, not the batches. Returns ``val_loss`` (nats/token) and
        ``val_bpc`` (bits per character). No weights change; no history row is written.
        """
        deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s
        return self.stepper.evaluate(self.val_split.tokens_per_char, deadline)

    def generate_sample(self) -> str:
        """A continuation of a newline (``sample_tokens`` long, temperature 0.8, the same seed
        every time), so successive samples show the model's writing improve, not the dice."""
        return self._sample_probe(self.model, self.step_count)

    # ------------------------------------------------------------------ driving (see .loop)

    def step(self) -> dict[str, Any]:
        """One training step and the bookkeeping due at it (row, evaluation, snapshot, checkpoint).

        Returns the step's metrics (the full history row at logged steps). Raises
        ``ValueError`` while a background run is going (pause it first), when the run has
        ended, and when the loss diverges (the status becomes ``diverged``).
        """
        return self.loop.step()

    def run(self) -> str:
        """Train in the calling thread until the run ends; returns the final status.

        Ends at ``max_steps``, ``max_seconds``, early stopping, divergence, a failure, or
        :meth:`stop` (from a callback, another thread, or control.json). Ctrl-C stops it
        cleanly with a checkpoint. Errors are reported in :attr:`status` / :attr:`error`, not raised.
        """
        return self.loop.run()

    def start(self) -> None:
        """Train in a background thread and return at once.

        Raises ``ValueError`` if a background run is already going (one trainer never runs
        two loops) or the run has ended (finished, diverged, failed). A stopped run may be
        started again: it continues from where it stopped.
        """
        self.control.start_worker(self.run, self.step_count)

    def pause(self, wait: bool = False, timeout: float | None = 10.0) -> None:
        """Pause after the step in progress. With ``wait``, return once the worker has paused."""
        thread = self.control.thread
        if self.control.pause() and wait and thread is not None and thread is not threading.current_thread():
            self.control.wait_until_paused(timeout)

    def resume(self) -> None:
        """Continue a paused run (nothing happens otherwise)."""
        self.control.resume()

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop after the step in progress, with a last evaluation and a checkpoint; the status
        is ``stopping`` at once, then ``stopped``. Idempotent; returns once the worker has ended
        (unless ``wait=False`` or when called from a callback inside the worker)."""
        self.control.stop()
        if wait:
            self.control.join(timeout)

    def join(self, timeout: float | None = None) -> str:
        """Wait for a background run to end; returns the status."""
        self.control.join(timeout)
        return self.status
