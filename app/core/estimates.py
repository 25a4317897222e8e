"""Training estimates shown before a run starts: time per step, and durations as people read them."""

from __future__ import annotations

import math

import lm_core
from lm_core.catalog import forward_flops
from lm_core.timing import measure_step_time as _measure


def measure_step_time(cfg: lm_core.ModelConfig, batch_size: int, steps: int = 3, device: str = "auto",
                      freeze: str | None = None) -> float:
    """Seconds per training step for this shape on this machine: :func:`lm_core.timing.measure_step_time`,
    the trainer's own step on random tokens after one warm-up step, on the device training would use
    (``freeze``: a fine-tuning run's frozen parameters)."""
    return _measure(cfg, int(batch_size), steps=steps, device=device, freeze=freeze)


def rough_step_time(cfg: lm_core.ModelConfig, batch_size: int, flops_per_s: float) -> float:
    """A first guess at seconds per training step, with no step run: a forward and a backward
    (3 × :func:`lm_core.catalog.forward_flops` over ``batch_size`` full contexts) at this machine's
    measured matmul speed. Real steps are slower (the optimizer, memory traffic, other work on the
    cores): a guess to read before measuring, never instead of it."""
    if flops_per_s <= 0:
        raise ValueError(f"flops_per_s must be positive, got {flops_per_s!r}")
    return 3.0 * int(batch_size) * forward_flops(cfg, cfg.block_size) / flops_per_s


def format_seconds(s: float | None) -> str:
    """A duration as a person reads it: "850 ms", "42 s", "4 min 05 s", "1 h 02 min".

    Rounded once, to the unit shown, before it is split: 299.7 s is "5 min 00 s", never
    "4 min 60 s"."""
    if s is None or not math.isfinite(s):
        return "–"
    s = max(0.0, float(s))
    if s < 1:
        ms = round(s * 1000)
        return f"{ms} ms" if ms < 1000 else "1 s"
    if s < 90:
        return f"{round(s)} s"
    if s < 3600 - 0.5:
        whole = round(s)
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(s / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"
