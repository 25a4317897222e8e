"""The article's lessons as plain data for the pages: the Markov (n-gram) baseline of a model's
corpus, where a run's val loss stopped improving and where it stopped, the over-fitting
demonstration's runs, and per-token surprise as a table. No Streamlit here; ``resources.py``
caches what is slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lm_core import corpora
from lm_core import runs as lm_runs
from lm_core.data import split_text
from lm_core.ngram import NGramModels, baseline_losses, fit_ngrams
from lm_core.surprise import Surprise, SurpriseComparison

BASELINE_MAX_CHARS = 5_000_000   # the app computes a run's missing baselines only for a text this small
BASELINE_MAX_VOCAB = 4096        # ... and a vocabulary this small (keys and tables stay small)
OVERFIT_PRESET = "overfit"
CURED_PRESET = "overfit-cured"
DEMO_PRESETS = (OVERFIT_PRESET, CURED_PRESET)
DEMO_LABELS = {OVERFIT_PRESET: "over-fitting", CURED_PRESET: "dropout + early stopping"}
LAYOUT_LABELS = {"nanogpt-cpu": "GPT-2 layout", "llama-cpu": "Llama layout"}  # the layout comparison's pair
MAX_DEMO_RUNS = 4                # the over-fitting chart overlays at most this many demo runs (newest)


class NoCorpus(ValueError):
    """The model's corpus is unknown, cannot be loaded, or is too large for the baselines here."""


def _corpus(spec: str | None, tokenizer) -> str:
    if not spec:
        raise NoCorpus("this model's training corpus is not known (a pretrained model, or a run without a "
                       "corpus spec), so there is no n-gram baseline to compare with")
    if getattr(tokenizer, "vocab_size", 0) > BASELINE_MAX_VOCAB:
        raise NoCorpus(f"the vocabulary has {tokenizer.vocab_size:,} tokens; n-gram tables are built here only "
                       f"for at most {BASELINE_MAX_VOCAB:,}")
    try:
        text = corpora.load_corpus(spec)
    except ValueError as e:
        raise NoCorpus(f"the training corpus {spec!r} could not be loaded ({e})") from None
    if len(text) > BASELINE_MAX_CHARS:
        raise NoCorpus(f"the training corpus {spec!r} has {len(text):,} characters; n-gram baselines are "
                       f"computed here only for at most {BASELINE_MAX_CHARS:,}")
    return text


def corpus_ngrams(spec: str | None, tokenizer, max_n: int = 2) -> NGramModels:
    """N-gram models (orders 1..``max_n``) fitted on the train split (first 90%) of the corpus
    ``spec``, in ``tokenizer``'s ids, as the trainer splits it. Raises :class:`NoCorpus`."""
    train, _ = split_text(_corpus(spec, tokenizer), tokenizer, 1)
    return fit_ngrams(train.ids, tokenizer.vocab_size, max_n=max_n)


def corpus_baselines(spec: str | None, tokenizer) -> list[dict[str, Any]]:
    """The n-gram baselines of a run that has no ``baselines.json`` (rows as
    :func:`lm_core.ngram.baseline_losses`). Raises :class:`NoCorpus`."""
    return baseline_losses(tokenizer, _corpus(spec, tokenizer))


# -- where val stopped improving, and where the run stopped ---------------------------------------


@dataclass(frozen=True)
class RunMarks:
    best_step: int | None       # the step of the lowest val loss (the weights kept in best.safetensors)
    best_val: float | None
    stopped_step: int | None    # the last step logged
    reason: str | None          # why the run ended (early_stopping, max_steps, …); None while it runs

    def chart_marks(self) -> list[tuple[float, str]]:
        """(step, label) for the loss chart: the best step, and the end when it is later."""
        out = []
        if self.best_step is not None:
            out.append((float(self.best_step), f"val best (step {self.best_step:,})"))
        if self.reason and self.stopped_step is not None and self.stopped_step != self.best_step:
            why = "early stopping" if self.reason == "early_stopping" else self.reason.replace("_", " ")
            out.append((float(self.stopped_step), f"stopped: {why}"))
        return out


def run_marks(history: pd.DataFrame | None, reason: str | None = None) -> RunMarks:
    """Where a history's val loss was lowest and where it ends; ``reason`` is the run's end reason
    (None while it trains)."""
    if history is None or not len(history) or "step" not in history:
        return RunMarks(None, None, None, reason)
    step = np.asarray(history["step"], dtype=np.float64)
    stopped = int(np.nanmax(step)) if np.isfinite(step).any() else None
    best = best_val = None
    if "val_loss" in history:
        val = np.asarray(history["val_loss"], dtype=np.float64)
        ok = np.isfinite(val) & np.isfinite(step)
        if ok.any():
            i = int(np.argmin(np.where(ok, val, np.inf)))
            best, best_val = int(step[i]), float(val[i])
    return RunMarks(best, best_val, stopped, reason)


# -- the over-fitting demonstration ----------------------------------------------------------------


def demo_preset_of(run_name: str, presets=DEMO_PRESETS) -> str | None:
    """Which of ``presets`` a run folder was trained with, from its name (``overfit-cured-…`` first)."""
    for p in sorted(presets, key=len, reverse=True):
        if run_name.startswith(p + "-"):
            return p
    return None


def demo_runs(root: Path, labels: dict[str, str] = DEMO_LABELS) -> list[dict[str, Any]]:
    """The runs under ``root`` of the demonstration whose presets are the keys of ``labels`` (the
    over-fitting one by default; :data:`LAYOUT_LABELS` for the layout comparison), newest
    :data:`MAX_DEMO_RUNS`, oldest first: ``name``, ``preset``, ``path``, ``status``, ``history``,
    ``best_step``, ``stopped_step``, ``reason`` — ready for :func:`app.lesson_figures.overfit_curves`."""
    found = []
    for info in lm_runs.list_runs(root):
        preset = demo_preset_of(info.name, tuple(labels))
        if preset is None or not info.ok:
            continue
        try:
            hist = lm_runs.read_history(info.path / lm_runs.HISTORY_FILE)
            status = lm_runs.read_status(info.path) or {}
        except ValueError:
            continue
        if not len(hist):
            continue
        marks = run_marks(hist, status.get("reason"))
        found.append({"name": f"{labels[preset]} ({info.name.rsplit('-', 2)[-1]})", "preset": preset, "path": info.path,
                      "status": str(status.get("status") or info.status), "history": hist,
                      "best_step": marks.best_step, "stopped_step": marks.stopped_step, "reason": marks.reason,
                      "modified": info.modified})
    found.sort(key=lambda r: r["modified"])
    return found[-MAX_DEMO_RUNS:]


def demo_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The demo runs' histories in one long table (run, step, train_loss, val_loss) for the CSV."""
    parts = []
    for r in runs:
        h = r["history"]
        cols = [c for c in ("step", "train_loss", "val_loss") if c in h]
        parts.append(h[cols].assign(run=r["name"], best_step=r["best_step"], stopped_step=r["stopped_step"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "step"])


# -- tables for the CSV downloads --------------------------------------------------------------------


def next_token_table(pieces: list[str], ids: list[int], p_model: np.ndarray, p_baseline: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"token_id": ids, "piece": pieces, "p_transformer": np.asarray(p_model, dtype=np.float64),
                         "p_bigram": np.asarray(p_baseline, dtype=np.float64)})


def top_union(p_model: np.ndarray, p_baseline: np.ndarray, k: int = 10) -> list[int]:
    """The ids of both distributions' top ``k`` tokens, most likely under the baseline first."""
    a = np.argsort(-np.asarray(p_baseline), kind="stable")[:k]
    b = np.argsort(-np.asarray(p_model), kind="stable")[:k]
    out = [int(i) for i in a]
    out += [int(i) for i in b if int(i) not in out]
    return out


def surprise_table(result: SurpriseComparison | Surprise) -> pd.DataFrame:
    """One row per predicted token: position, piece, the transformer's loss (nats), probability and
    top guesses; for a comparison also the baseline's loss and probability and the nats saved."""
    m = result.model if isinstance(result, SurpriseComparison) else result
    df = pd.DataFrame({
        "position": np.arange(1, len(m.ids)), "token_id": m.ids[1:], "piece": m.pieces[1:],
        "loss_transformer_nats": m.losses, "p_transformer": m.true_probs,
        "top_transformer": [" | ".join(p) for p in m.top_pieces],
    })
    if isinstance(result, SurpriseComparison):
        b, short = result.baseline, result.baseline.name.split()[0]
        df[f"loss_{short}_nats"], df[f"p_{short}"], df["nats_saved"] = b.losses, b.true_probs, result.gain
    return df
