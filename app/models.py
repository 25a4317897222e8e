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
from lm_core.tokenizers import CharTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
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
    kind: str                   # "default", "run" or "live"
    model: lm_core.GPT
    tokenizer: Any
    history: pd.DataFrame | None = None
    path: Path | None = None
    corpus: str | None = None
    step: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    run_config: Any = None      # lm_core.runs.RunConfig when loaded from a folder

    @property
    def config(self) -> lm_core.ModelConfig:
        return self.model.config

    def describe(self) -> str:
        c = self.config
        n = self.model.num_params()
        size = f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"
        return (f"{c.n_layer} layers · {c.n_head} heads · width {c.n_embd} · context {c.block_size} · "
                f"{getattr(self.tokenizer, 'kind', '?')} vocab {c.vocab_size} · {size} parameters")


def folder_stamp(path: Path) -> float:
    """A number that changes when a run folder's weights are rewritten (cache invalidation)."""
    p = Path(path) / lm_runs.MODEL_FILE
    try:
        return p.stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


def load_folder(path: Path, kind: str, label: str | None = None) -> LoadedModel:
    """Load a run folder with ``lm_core.runs.load_run``; raises ``ValueError`` saying what is wrong."""
    run = lm_runs.load_run(path)
    stamp = folder_stamp(path)
    return LoadedModel(
        key=f"{kind}:{Path(path).resolve()}@{stamp:.6f}",
        label=label or Path(path).name,
        kind=kind,
        model=run.model,
        tokenizer=run.tokenizer,
        history=run.history,
        path=Path(path),
        corpus=run.config.corpus,
        step=run.step,
        samples=list(run.samples),
        run_config=run.config,
    )


def fallback_model() -> LoadedModel:
    """An untrained tiny character model, used only when the default model cannot be loaded,
    so that every page still renders (the sidebar says so and how to fix it)."""
    text = "".join(chr(c) for c in range(32, 127)) + "\n"
    tok = CharTokenizer.train(text)

    torch.manual_seed(0)
    cfg = lm_core.ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model = lm_core.GPT(cfg).eval()
    return LoadedModel(key="fallback:untrained", label="untrained (default model missing)",
                       kind="default", model=model, tokenizer=tok, history=None)


def list_run_folders(root: Path | None = None) -> list[Any]:
    """``lm_core.runs.list_runs`` of the runs root (newest first; broken folders carry ``error``)."""
    return lm_runs.list_runs(root or runs_root())
