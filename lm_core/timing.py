"""How long one training step of a model shape takes on this machine, measured with the trainer's own step.

The estimate the Train page shows before a run starts: the same forward, backward, gradient
clipping and fused AdamW update as :class:`lm_core.train.Trainer` (it *is* a Trainer), on
random tokens, after one warm-up step.
"""

from __future__ import annotations

import time

import torch

from .config import ModelConfig, TrainConfig
from .model import GPT

__all__ = ["measure_step_time"]


class _IdTokenizer:
    """Characters -> ids modulo the vocabulary: enough for the trainer to cut and batch a random text."""

    kind = "ids"
    unk_id = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [ord(c) % self.vocab_size for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(97 + int(i) % 26) for i in ids)


def measure_step_time(cfg: ModelConfig, batch_size: int, steps: int = 3, device: str = "auto") -> float:
    """Seconds per training step of a ``cfg`` model at ``batch_size`` on ``device`` (mean of
    ``steps`` steps after one warm-up step; no evaluation, logging or checkpoint in between)."""
    from .train import Trainer  # the trainer imports much more than this module needs at import time

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    far = 10 * (steps + 1) + 1000  # no evaluation, row or checkpoint falls inside the measured steps
    tc = TrainConfig(batch_size=int(batch_size), max_steps=far, eval_interval=far, log_interval=far,
                     checkpoint_interval=far, warmup_steps=0, device=device, seed=0)
    gen = torch.Generator().manual_seed(0)
    n_chars = 20 * (cfg.block_size + 1)  # both splits (90% / 10%) hold more than one window
    text = "".join(chr(32 + int(c)) for c in torch.randint(0, 10_000, (n_chars,), generator=gen))
    torch.manual_seed(0)
    trainer = Trainer(GPT(cfg), _IdTokenizer(cfg.vocab_size), text, tc)

    def sync() -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)

    trainer.step()  # warm-up: allocations, kernels
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    sync()
    return (time.perf_counter() - t0) / steps
