"""Circuits forming during training: head scores over the steps, and the induction bump.

The trainer records ``analysis.probe_head_scores`` at each evaluation (a long DataFrame: step,
kind, layer, head, value). Runs without that record (older runs, or an lm_core that does not
record them yet) get the same scores computed here from their weight snapshots. No Streamlit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

import lm_core
from lm_core import analysis, metrics

INDUCTION_THRESHOLD = 0.4   # an induction score this high means an induction head has formed
MIN_RISE = 0.15             # below this overall rise nothing is marked


def probe_scores(model: lm_core.GPT, tokenizer=None) -> dict[str, np.ndarray]:
    """``analysis.probe_head_scores`` (the fixed repeated-random-token probe, drawn from the ids the
    trainer draws from for ``tokenizer``) as float32 ``[L, H]`` arrays."""
    ids = analysis.probe_token_ids(tokenizer) if tokenizer is not None else None
    with torch.no_grad():
        scores = analysis.probe_head_scores(model, token_ids=ids)
    return {k: v.float().numpy().astype(np.float32) for k, v in scores.items()}


def long_frame(per_step: Iterable[tuple[int, Mapping[str, np.ndarray]]]) -> pd.DataFrame:
    """``[(step, {metric: [L, H]}), …]`` -> the long format the trainer records (:func:`lm_core.metrics.long_frame`)."""
    return metrics.long_frame(per_step)


def kinds_in(df: pd.DataFrame) -> list[str]:
    """The registered head metrics present in a long head-score frame, in the registry's order."""
    present = set(df["kind"]) if len(df) else set()
    return [name for name in metrics.HEAD_METRICS if name in present]


def strongest_head(z: np.ndarray, heads: list[tuple[int, int]], kind: str) -> tuple[int, int]:
    """The head whose last recorded value of metric ``kind`` is the strongest (its direction decides)."""
    return heads[metrics.head_metric(kind).strongest(z[:, -1])]


def matrix(df: pd.DataFrame, kind: str) -> tuple[np.ndarray, list[int], list[tuple[int, int]]]:
    """One kind as ``z [L*H, S]`` (rows layer by layer, head by head; columns the steps), the
    steps and the (layer, head) of each row. Missing values are NaN."""
    d = df[df["kind"] == kind]
    if d.empty:
        return np.zeros((0, 0), dtype=np.float32), [], []
    piv = d.pivot_table(index=["layer", "head"], columns="step", values="value", aggfunc="last")
    piv = piv.sort_index()
    heads = [(int(l), int(h)) for l, h in piv.index]
    return piv.to_numpy(dtype=np.float32), [int(s) for s in piv.columns], heads


@dataclass
class Bump:
    """Where an induction head formed: the step to mark on the loss curve, and why."""

    step: int
    layer: int
    head: int
    score: float
    rule: str        # "threshold" or "fastest rise"

    def label(self) -> str:
        what = "induction head forms" if self.rule == "threshold" else "induction rising fastest"
        return f"{what} (L{self.layer} H{self.head})"


def induction_bump(df: pd.DataFrame, threshold: float = INDUCTION_THRESHOLD) -> Bump | None:
    """The step at which an induction head formed, by this rule:

    1. the first recorded step at which some head's induction score reaches ``threshold``;
    2. otherwise, if the best head's score rose by at least ``MIN_RISE`` overall, the step that
       ends its steepest rise between two recordings;
    3. otherwise None (nothing to mark).
    """
    z, steps, heads = matrix(df, "induction")
    if not steps:
        return None
    filled = np.nan_to_num(z, nan=-np.inf)
    best = filled.max(axis=0)           # (S,) the best head at each step
    who = filled.argmax(axis=0)         # (S,)
    over = np.flatnonzero(best >= threshold)
    if over.size:
        i = int(over[0])
        l, h = heads[int(who[i])]
        return Bump(steps[i], l, h, float(best[i]), "threshold")
    finite = np.isfinite(best)
    if finite.sum() >= 2 and best[finite].max() - best[finite][0] >= MIN_RISE:
        rise = np.diff(np.where(finite, best, np.nan))
        if np.isfinite(rise).any():
            i = int(np.nanargmax(rise)) + 1
            l, h = heads[int(who[i])]
            return Bump(steps[i], l, h, float(best[i]), "fastest rise")
    return None


RULE_TEXT = (f"The dashed line on the loss curve marks the first evaluation at which some head's induction "
             f"score reaches {INDUCTION_THRESHOLD} (if none does yet: where the best score rose fastest, once it "
             f"has risen by {MIN_RISE}). The loss usually drops steeply around it: the 'induction bump'.")
