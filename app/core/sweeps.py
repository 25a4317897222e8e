"""Sweeps over every head (one forward per head: 270 for SmolLM2-135M), run in short chunks so
that a page shows a progress bar and a Cancel button between them, and finished results kept for
every session (same model, text and settings: instant). No Streamlit here.

A :class:`Sweep` belongs to one session (the page keeps it in its session state and advances it
on each fragment rerun); :class:`SweepResults` is shared by the server's sessions, keyed by
everything the result depends on, and safe under concurrent use.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

import lm_core
from lm_core import analysis

CHUNK_SECONDS = 0.4          # work per chunk: the page redraws its progress bar between chunks
TICK_SECONDS = 0.1           # the page asks for the next chunk this soon after drawing one
AUTO_SWEEP_COST = 5e9        # parameters × heads × tokens below which a page sweeps unasked, in one go
MAX_RESULTS = 32             # finished sweeps kept for every session (each [L, H] float32: tiny)


def sweep_cost(model: lm_core.GPT, n_tokens: int) -> float:
    """A rough size of a sweep over every head: parameters × heads × tokens."""
    cfg = model.config
    return float(model.num_params()) * cfg.n_layer * cfg.n_head * int(n_tokens)


@dataclass
class Sweep:
    """Single-head ablation effects over every head of a model on one text, computed a chunk at a
    time: ``values [L, H]`` (NaN where not yet computed) is the loss increase when that head alone
    is ablated (``lm_core.analysis.head_ablation_effects``)."""

    key: tuple                      # (model key, ids, mode): what the result depends on
    ids: list[int]
    mode: str
    n_layer: int
    n_head: int
    done: int = 0
    base_loss: float | None = None
    values: np.ndarray = field(default=None)  # type: ignore[assignment]
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.values is None:
            self.values = np.full((self.n_layer, self.n_head), np.nan, dtype=np.float32)

    @property
    def total(self) -> int:
        return self.n_layer * self.n_head

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (None before the first head)."""
        if not self.done:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)

    def advance(self, model: lm_core.GPT, budget_s: float | None = None) -> int:
        """Compute heads in order until ``budget_s`` (default :data:`CHUNK_SECONDS`) is spent, at
        least one; returns how many were done in this chunk."""
        budget = CHUNK_SECONDS if budget_s is None else budget_s
        t0 = time.perf_counter()
        n = 0
        while not self.finished:
            l, h = divmod(self.done, self.n_head)
            df = analysis.head_ablation_effects(model, self.ids, mode=self.mode, heads=[(l, h)],
                                                base_loss=self.base_loss)
            if self.base_loss is None:
                self.base_loss = float(df["loss"].iloc[0] - df["loss_increase"].iloc[0])
            self.values[l, h] = np.float32(df["loss_increase"].iloc[0])
            self.done += 1
            n += 1
            if time.perf_counter() - t0 >= budget:
                break
        self.elapsed_s += time.perf_counter() - t0
        return n


def ablation_sweep(model_key: str, model: lm_core.GPT, ids: list[int], mode: str) -> Sweep:
    """A new sweep of every head's single-head ablation effect on ``ids`` (nothing computed yet)."""
    cfg = model.config
    return Sweep(key=sweep_key(model_key, ids, mode), ids=[int(i) for i in ids], mode=str(mode),
                 n_layer=cfg.n_layer, n_head=cfg.n_head)


def sweep_key(model_key: str, ids, mode: str) -> tuple:
    """The key a finished :func:`ablation_sweep` is kept under."""
    return ("ablation", model_key, tuple(int(i) for i in ids), str(mode))


class SweepResults:
    """Finished sweeps, shared by every session: key → read-only ``[L, H]`` array, the oldest
    dropped beyond ``max_entries``. Locked, so concurrent sessions can read and write."""

    def __init__(self, max_entries: int = MAX_RESULTS) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.max_entries = max_entries

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key: Hashable, values: np.ndarray) -> None:
        v = np.array(values, dtype=np.float32, copy=True)
        v.setflags(write=False)  # shared: nobody may change another session's result
        with self._lock:
            self._items[key] = v
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
