"""Training estimates shown before a run starts: time per step, and durations as people read them."""

from __future__ import annotations

import math

import lm_core
from lm_core.timing import measure_step_time as _measure


def measure_step_time(cfg: lm_core.ModelConfig, batch_size: int, steps: int = 3, device: str = "auto") -> float:
    """Seconds per training step for this shape on this machine: :func:`lm_core.timing.measure_step_time`,
    the trainer's own step on random tokens after one warm-up step, on the device training would use."""
    return _measure(cfg, int(batch_size), steps=steps, device=device)


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = max(0.0, float(s))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:02.0f} s"
    return f"{s // 3600:.0f} h {(s % 3600) // 60:02.0f} min"
