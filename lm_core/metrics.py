"""The head-metric registry: every per-head score LM Lens shows is declared here, once.

A :class:`HeadMetric` is a name (the key in records, tables and files), a label (what the app
shows), a function of a :class:`PatternProbe` returning ``[L, H]``, the value range (for colour
scales), a direction (whether a high or a low value means the head does the job strongly /
attends in a focused way) and a help sentence. Everything that lists head scores iterates
:data:`HEAD_METRICS`: the trainer's probe (:func:`probe_head_scores`, recorded at each
evaluation), :func:`all_head_scores` on a text, the app's Attention overview, its Circuits panel
and every head-score export. Adding a metric is one :func:`register` call in this file.

Patterns are indexed ``[L, H, query, key]`` as everywhere in :mod:`lm_core.analysis`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import analysis
from .model import GPT

__all__ = [
    "HEAD_METRICS",
    "HeadMetric",
    "PatternProbe",
    "all_head_scores",
    "attention_sink",
    "head_metric",
    "head_scores_table",
    "induction_score",
    "long_frame",
    "metric_names",
    "probe_head_scores",
    "register",
    "registered",
    "score_patterns",
]


@dataclass(frozen=True)
class PatternProbe:
    """What a metric reads: attention patterns of one sequence and its tokens.

    ``repeat_start`` is the first query row of the repeated copy when the sequence is a random
    run of tokens written twice (the trainer's probe): metrics about repeats (duplicate token,
    induction) score only the rows from there on, so a perfect head scores 1. It is 0 for
    ordinary text (every row counts, TransformerLens' ``detect_head`` defaults).
    """

    patterns: torch.Tensor   # [L, H, T, T] float32 on the CPU, query rows, key columns
    tokens: torch.Tensor     # [T] token ids
    repeat_start: int = 0


@dataclass(frozen=True)
class HeadMetric:
    """One per-head score: declared once, read by the trainer, the pages and the exports."""

    name: str                                      # record / column key, e.g. "induction"
    label: str                                     # what the app shows, e.g. "induction"
    fn: Callable[[PatternProbe], torch.Tensor]     # probe -> [L, H]
    value_range: tuple[float, float] | None        # fixed colour range; None: the data's own range
    direction: str                                 # "high" or "low": which end means strong / focused
    help: str                                      # one sentence: what the score measures

    def __post_init__(self) -> None:
        if self.direction not in ("high", "low"):
            raise ValueError(f"direction of metric {self.name!r} must be 'high' or 'low', got {self.direction!r}")

    @property
    def high_is_strong(self) -> bool:
        """True when a higher value means the head does this job more (False: entropy, low = focused)."""
        return self.direction == "high"

    def strongest(self, values: Sequence[float]) -> int:
        """Index of the strongest of ``values`` (NaN never wins)."""
        v = torch.tensor(np.asarray(values, dtype=np.float64))
        if not self.high_is_strong:
            v = -v
        return int(torch.nan_to_num(v, nan=float("-inf")).argmax())


HEAD_METRICS: dict[str, HeadMetric] = {}


def register(metric: HeadMetric) -> HeadMetric:
    """Add ``metric`` to :data:`HEAD_METRICS` (its place in the order is where it is registered)."""
    if metric.name in HEAD_METRICS:
        raise ValueError(f"a head metric named {metric.name!r} is already registered")
    HEAD_METRICS[metric.name] = metric
    return metric


@contextmanager
def registered(metric: HeadMetric) -> Iterator[HeadMetric]:
    """Register ``metric`` for the duration of the block (tests, experiments)."""
    register(metric)
    try:
        yield metric
    finally:
        HEAD_METRICS.pop(metric.name, None)


def metric_names() -> list[str]:
    return list(HEAD_METRICS)


def head_metric(name: str) -> HeadMetric:
    try:
        return HEAD_METRICS[name]
    except KeyError:
        raise ValueError(f"unknown head metric {name!r}; registered: {metric_names()}") from None


# -- the metrics ------------------------------------------------------------------------------


def attention_sink(patterns: torch.Tensor) -> torch.Tensor:
    """Mean share of attention each query puts on the first position: ``[L, H, T, T]`` -> ``[L, H]``.

    Row 0 can only attend to itself, so it is left out when there are other rows. A "sink" head
    parks its attention on the first token when it has nothing useful to read.
    """
    rows = patterns[..., 1:, 0] if patterns.shape[-2] > 1 else patterns[..., :, 0]  # (L, H, T-1)
    return rows.float().mean(dim=-1)


def _detect(kind: str, repeats: bool) -> Callable[[PatternProbe], torch.Tensor]:
    def fn(p: PatternProbe) -> torch.Tensor:
        return analysis.head_scores(p.patterns, p.tokens, kind, query_start=p.repeat_start if repeats else 0)
    return fn


register(HeadMetric(
    "induction", "induction", _detect("induction", repeats=True), (0.0, 1.0), "high",
    "attention on the token after an earlier copy of the current one"))
register(HeadMetric(
    "previous_token", "previous token", _detect("previous_token", repeats=False), (0.0, 1.0), "high",
    "attention on the token just before"))
register(HeadMetric(
    "duplicate_token", "duplicate token", _detect("duplicate_token", repeats=True), (0.0, 1.0), "high",
    "attention on earlier copies of the same token"))
register(HeadMetric(
    "entropy", "entropy (nats)", lambda p: analysis.attention_entropy(p.patterns), None, "low",
    "how spread out the attention is (nats; low = focused)"))
register(HeadMetric(
    "attention_sink", "attention sink", lambda p: attention_sink(p.patterns), (0.0, 1.0), "high",
    "attention on the first token, where heads park it when there is nothing to read"))


# -- scoring ------------------------------------------------------------------------------------


def score_patterns(patterns, tokens, repeat_start: int = 0,
                   names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Every registered metric (or those ``names``) on patterns of one sequence: ``{name: [L, H]}``.

    ``patterns`` is an :class:`~lm_core.hooks.ActivationCache` of one sequence or a tensor
    ``[L, H, T, T]``; ``tokens`` its ids ``[T]``; ``repeat_start`` as in :class:`PatternProbe`.
    """
    probe = PatternProbe(analysis.attention_patterns(patterns), analysis._as_tokens(tokens), int(repeat_start))
    return {n: head_metric(n).fn(probe).float() for n in (names if names is not None else metric_names())}


def all_head_scores(model: GPT, tokens) -> dict[str, torch.Tensor]:
    """Every registered metric on ``tokens`` (one sequence of ordinary text), each ``[L, H]``."""
    idx = analysis._as_idx(model, tokens)
    with analysis._inference(model):
        _, cache = model.run_with_cache(idx, names=analysis.is_pattern_name)
    return score_patterns(cache, idx[0].cpu())


def _probe(model: GPT, seq_len: int, n_repeats: int, seed: int, batch: int,
           token_ids: Sequence[int] | None, names: Iterable[str] | None) -> dict[str, torch.Tensor]:
    """Metrics on ``batch`` random runs of ``seq_len`` tokens repeated ``n_repeats`` times, batch mean."""
    cfg = model.config
    tokens = analysis.repeated_random_tokens(cfg.vocab_size, seq_len, n_repeats, seed=seed, batch=batch,
                                             token_ids=token_ids)  # (batch, n_repeats * seq_len)
    with analysis._inference(model):
        _, cache = model.run_with_cache(tokens.to(model.device), names=analysis.is_pattern_name)
    p = torch.stack([cache["pattern", l] for l in range(cfg.n_layer)]).float().cpu()  # (L, B, H, T, T)
    names = list(names) if names is not None else metric_names()
    per = [score_patterns(p[:, b], tokens[b], repeat_start=seq_len, names=names) for b in range(batch)]
    return {n: torch.stack([s[n] for s in per]).mean(dim=0) for n in names}


def probe_head_scores(model: GPT, seq_len: int | None = None, seed: int = 0, batch: int = 4,
                      token_ids: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Every registered metric on a fixed probe, for watching circuits form: ``{name: [L, H]}``.

    The probe is :func:`~lm_core.analysis.repeated_random_tokens` (``batch`` sequences, each a
    random run of ``seq_len`` tokens repeated once; ``seq_len`` defaults to ``min(50, block_size
    // 2)``), the same for every call with the same ``seed``, so scores at different training
    steps compare. Metrics about repeats score the rows of the repeated copy only (a perfect
    induction head scores 1.0); ``entropy`` is in nats. Averaged over the batch. ``token_ids``
    limits the random ids to that pool (the trainer passes
    :func:`~lm_core.analysis.probe_token_ids` of its tokenizer).
    """
    cfg = model.config
    if seq_len is None:
        seq_len = min(50, cfg.block_size // 2)
    if seq_len < 2 or 2 * seq_len > cfg.block_size:
        raise ValueError(f"seq_len must be in 2 .. {cfg.block_size // 2} for block_size={cfg.block_size}, got {seq_len}")
    return _probe(model, seq_len, 2, seed, batch, token_ids, None)


def induction_score(
    model: GPT, seq_len: int | None = None, seed: int = 0, n_repeats: int = 2, batch: int = 1,
    token_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """Induction score of every head, ``[L, H]`` in ``[0, 1]``: the ``induction`` metric on
    :func:`~lm_core.analysis.repeated_random_tokens` (``n_repeats`` copies of ``seq_len`` random
    tokens, ``seq_len`` defaulting to ``min(50, block_size // n_repeats)``), scored over the query
    rows of the repeats only, averaged over ``batch`` sequences. A head that always attends to the
    token after the previous occurrence of the current token scores 1.0.
    """
    cfg = model.config
    if seq_len is None:
        seq_len = min(50, cfg.block_size // max(1, int(n_repeats)))
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 2:
        raise ValueError(f"n_repeats must be at least 2 (an induction head needs a repeat), got {n_repeats!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a whole number >= 1, got {seq_len!r}")
    if seq_len * n_repeats > cfg.block_size:
        raise ValueError(
            f"seq_len {seq_len} x n_repeats {n_repeats} = {seq_len * n_repeats} tokens do not fit the "
            f"model's context (block_size={cfg.block_size}); use seq_len <= {cfg.block_size // n_repeats}"
        )
    return _probe(model, seq_len, n_repeats, seed, batch, token_ids, ["induction"])["induction"]


# -- tables -------------------------------------------------------------------------------------


def head_scores_table(scores: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """``{name: [L, H]}`` -> one row per head: ``layer``, ``head`` and a column per metric."""
    if not scores:
        raise ValueError("no scores given: pass the dict returned by all_head_scores")
    first = next(iter(scores.values()))
    L, H = first.shape
    layer, head = torch.meshgrid(torch.arange(L), torch.arange(H), indexing="ij")
    cols = {"layer": layer.flatten().numpy(), "head": head.flatten().numpy()}
    for kind, s in scores.items():
        s = torch.as_tensor(s)
        if tuple(s.shape) != (L, H):
            raise ValueError(f"score {kind!r} has shape {tuple(s.shape)}, the others {(L, H)}")
        cols[kind] = s.detach().float().flatten().cpu().numpy()
    return pd.DataFrame(cols)


def long_frame(per_step: Iterable[tuple[int, Mapping[str, object]]]) -> pd.DataFrame:
    """``[(step, {name: [L, H]}), …]`` -> the long table the trainer records and the run folder
    keeps: columns ``step, kind, layer, head, value`` (see :data:`lm_core.runs.HEAD_SCORE_COLUMNS`)."""
    from .runs import head_scores_frame

    return head_scores_frame([{"step": int(s), "scores": scores} for s, scores in per_step])
