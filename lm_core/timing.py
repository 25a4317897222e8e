"""How long one training step of a model shape takes on this machine, measured with the trainer's own step.

The estimate the Train page shows before a run starts: :class:`lm_core.train.step.Stepper`'s
``one_step`` (the same forward, backward, gradient clipping and fused AdamW update as every run)
on random tokens, after one warm-up step.
"""

from __future__ import annotations

import threading
import time

import torch

from .config import ModelConfig, TrainConfig
from .model import GPT

__all__ = ["measure_matmul_flops", "measure_step_time"]


def measure_step_time(cfg: ModelConfig, batch_size: int, steps: int = 3, device: str = "auto",
                      freeze: str | None = None) -> float:
    """Seconds per training step of a ``cfg`` model at ``batch_size`` on ``device`` (mean of
    ``steps`` steps after one warm-up step; nothing else is done in between), with the parameters
    ``freeze`` names frozen as a fine-tuning run freezes them (less backward work, fewer updates)."""
    from .train.dist import Ranks
    from .train.step import Stepper, resolve_device

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    tc = TrainConfig(batch_size=int(batch_size), max_steps=steps + 1, warmup_steps=0, device=device, seed=0,
                     freeze=freeze)
    dev = resolve_device(tc.device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (4 * (cfg.block_size + 1),), generator=gen)  # [N] random tokens
    torch.manual_seed(0)
    model = GPT(cfg).to(dev)
    stepper = Stepper(model, tc, dev, Ranks(dev), ids, ids, threading.RLock())

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    stepper.one_step(measure=False)  # warm-up: allocations, kernels
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        stepper.one_step(measure=False)
    sync()
    return (time.perf_counter() - t0) / steps


def measure_matmul_flops(tokens: int = 128, width: int = 768, repeats: int = 5) -> float:
    """Floating-point operations per second of this machine on a transformer-shaped float32
    matmul (``tokens`` × ``width`` by ``width`` × 4·``width``: an MLP at GPT-2 width), the best
    of ``repeats`` after one warm-up; with the current torch thread setting. What
    :func:`lm_core.catalog.estimate` turns a parameter count into seconds with."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, width, generator=gen)            # (T, D)
    b = torch.randn(width, 4 * width, generator=gen)         # (D, 4D)
    best = float("inf")
    with torch.no_grad():
        a @ b
        for _ in range(max(1, int(repeats))):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2.0 * tokens * width * 4 * width / max(best, 1e-9)
