"""Where models come from: the shipped default, run folders under ``runs/``, the live run.

Everything the pages need about "the active model" is a :class:`LoadedModel`: the GPT, its
tokenizer, its training history and a ``key`` that changes whenever the weights do (cache key
for every derived result). No Streamlit here; ``resources.py`` caches the loaders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import lm_core
from lm_core import runs as lm_runs
from lm_core.mechanics import layout
from lm_core.pretrained import config_from_hf
from lm_core.tokenizers import CharTokenizer

from . import memory

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "assets" / "default"
RUNS_ENV = "LM_LENS_RUNS_DIR"

DEFAULT_CHOICE = "default"


def runs_root() -> Path:
    """Where app-trained runs are written and listed: env ``LM_LENS_RUNS_DIR``, else ``runs/``."""
    env = os.environ.get(RUNS_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "runs"


def default_model_dir() -> Path:
    env = os.environ.get("LM_LENS_DEFAULT_MODEL")
    return Path(env).expanduser() if env else DEFAULT_MODEL_DIR


@dataclass
class LoadedModel:
    """A model ready to inspect."""

    key: str                    # changes whenever the weights change: the cache key
    label: str                  # what the sidebar shows
    kind: str                   # "default", "run", "live" or "pretrained"
    model: lm_core.GPT
    tokenizer: Any
    history: pd.DataFrame | None = None
    path: Path | None = None
    corpus: str | None = None
    step: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    run_config: Any = None      # lm_core.runs.RunConfig when loaded from a folder
    family: str = ""            # the run (or source) whatever the step: "run:<path>", "default", …
    final_step: int | None = None  # the step of the run's own weights (``step`` differs when time travelling)
    head_scores: pd.DataFrame | None = None  # long: step, kind, layer, head, value (recorded in training)

    @property
    def time_travelling(self) -> bool:
        """True when these are an earlier snapshot's weights, not the run's latest."""
        return self.final_step is not None and self.step is not None and self.step != self.final_step

    @property
    def config(self) -> lm_core.ModelConfig:
        return self.model.config

    def describe(self) -> str:
        c = self.config
        n = self.model.num_params()
        size = f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"
        return (f"{c.n_layer} layers · {c.n_head} heads · width {c.n_embd} · context {c.block_size} · "
                f"{getattr(self.tokenizer, 'kind', '?')} vocab {c.vocab_size} · {size} parameters  \n"
                f"{layout(c).summary()}")


def folder_stamp(path: Path) -> float:
    """A number that changes when a run folder's weights are rewritten (cache invalidation)."""
    p = Path(path) / lm_runs.MODEL_FILE
    try:
        return p.stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


HEAD_SCORE_COLUMNS = lm_runs.HEAD_SCORE_COLUMNS


def recorded_head_scores(source: Any) -> pd.DataFrame:
    """The head scores recorded during training (``Trainer.head_scores``, ``TrainSnapshot.head_scores``
    or ``Run.head_scores``: long format step, kind, layer, head, value); an empty frame with those
    columns when the object has none (older lm_core, older runs)."""
    df = getattr(source, "head_scores", None)
    if not isinstance(df, pd.DataFrame) or not set(HEAD_SCORE_COLUMNS) <= set(df.columns):
        return pd.DataFrame(columns=HEAD_SCORE_COLUMNS)
    return df


def snapshot_steps(path: Path | None) -> list[int]:
    """Steps with weight snapshots in a run folder (a directory listing; nothing is read)."""
    return lm_runs.list_snapshot_steps(path) if path is not None else []


def snapshot_stamp(path: Path, step: int) -> float:
    """Changes when a snapshot file is rewritten (a resumed run writes its snapshots again)."""
    try:
        return lm_runs.snapshot_path(path, step).stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


def load_run(path: Path) -> Any:
    """``lm_core.runs.load_run`` (raises ``ValueError`` saying what is wrong, and
    ``memory.MemoryProblem`` before reading the weights when they would not fit in memory)."""
    memory.check_load(lm_runs.load_run_config(path).model, f"The model in {Path(path).name}")
    return lm_runs.load_run(path)


def from_run(run: Any, kind: str, label: str | None = None) -> LoadedModel:
    """The latest weights of a loaded ``lm_core.runs.Run`` as a :class:`LoadedModel`."""
    path = Path(run.path)
    stamp = folder_stamp(path)
    return LoadedModel(
        key=f"{kind}:{path.resolve()}@{stamp:.6f}",
        label=label or path.name,
        kind=kind,
        model=run.model,
        tokenizer=run.tokenizer,
        history=run.history,
        path=path,
        corpus=run.config.corpus,
        step=run.step,
        samples=list(run.samples),
        run_config=run.config,
        family=f"run:{path.resolve()}",
        final_step=run.step,
        head_scores=recorded_head_scores(run),
    )


def at_snapshot(base: LoadedModel, model: lm_core.GPT, step: int, stamp: float) -> LoadedModel:
    """``base`` (a run's latest weights) with the weights of its snapshot at ``step`` instead."""
    return LoadedModel(
        key=f"{base.family}#step{step}@{stamp:.6f}",
        label=f"{base.label} · step {step}",
        kind=base.kind,
        model=model,
        tokenizer=base.tokenizer,
        history=base.history,
        path=base.path,
        corpus=base.corpus,
        step=int(step),
        samples=base.samples,
        run_config=base.run_config,
        family=base.family,
        final_step=base.final_step,
        head_scores=base.head_scores,
    )


def load_folder(path: Path, kind: str, label: str | None = None) -> LoadedModel:
    """Load a run folder with ``lm_core.runs.load_run``; raises ``ValueError`` saying what is wrong."""
    return from_run(load_run(path), kind, label)


def load_pretrained_model(name: str, revision: str | None = None) -> LoadedModel:
    """A pretrained model from the hub (cache first) or a local folder, via
    ``lm_core.load_pretrained``; ``revision`` a hub branch such as Pythia's ``"step1000"``. Raises
    ``ValueError`` saying what to do (transformers missing, offline, no tokenizer in the folder)."""
    name = (name or "").strip()
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():  # a local folder: refuse what would not fit before reading weights
        try:
            cfg = config_from_hf(lm_runs.read_json(folder / "config.json", "model config"))
        except ValueError:
            cfg = None  # load_pretrained says what is wrong with it
        if cfg is not None:
            memory.check_load(cfg, f"The model in {folder.name}")
    model, tok = lm_core.load_pretrained(name, revision=revision)
    if tok is None:
        raise ValueError(f"{name!r} has no tokenizer (tokenizer.json, or vocab.json + merges.txt) next to the "
                         f"weights; put the tokenizer files in the folder and press Load again.")
    model.eval()
    short = Path(name).name if Path(name).expanduser().is_dir() else name
    step = int(revision[4:]) if revision and revision.startswith("step") and revision[4:].isdigit() else None
    at = f" @ step {step:,}" if step is not None else (f" @ {revision}" if revision else "")
    return LoadedModel(key=f"pretrained:{name}" + (f"@{revision}" if revision else ""),
                       label=f"{short} (pretrained){at}", kind="pretrained", model=model, tokenizer=tok,
                       history=None, family=f"pretrained:{name}", step=step)


def corpus_spec(lm: LoadedModel) -> str | None:
    """The corpus spec the model was trained on (from its run folder), or None (pretrained, unknown)."""
    if lm.run_config is not None:
        return lm.run_config.corpus
    if lm.path is not None:
        try:
            return lm_runs.load_run_config(lm.path).corpus
        except ValueError:
            return None
    return None


def fallback_model() -> LoadedModel:
    """An untrained tiny character model, used only when the default model cannot be loaded,
    so that every page still renders (the sidebar says so and how to fix it)."""
    text = "".join(chr(c) for c in range(32, 127)) + "\n"
    tok = CharTokenizer.train(text)

    torch.manual_seed(0)
    cfg = lm_core.ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model = lm_core.GPT(cfg).eval()
    return LoadedModel(key="fallback:untrained", label="untrained (default model missing)",
                       kind="default", model=model, tokenizer=tok, history=None, family="fallback")


def list_run_folders(root: Path | None = None) -> list[Any]:
    """``lm_core.runs.list_runs`` of the runs root (newest first; broken folders carry ``error``)."""
    return lm_runs.list_runs(root or runs_root())
