"""Configuration dataclasses, validated once at construction.

Every invalid value raises ``ValueError`` with a sentence a user can act on. Both configs are
plain data: ``to_dict()`` / ``from_dict()`` round-trip through the run folder's JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

# Bigger than GPT-2 XL (1.56 B parameters) is out of scope for an explorer on a laptop.
MAX_PARAMS = 2_000_000_000
MAX_BLOCK_SIZE = 16_384


def _require_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _require_float(name: str, value: Any, lo: float, hi: float, *, lo_open=False, hi_open=False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value}")


class _Config:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} must be built from a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Shape of a GPT-2-layout model (names as in GPT-2 / nanoGPT)."""

    vocab_size: int = 66
    block_size: int = 64           # longest context the model sees (learned positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True              # biases in Linear and LayerNorm layers, as GPT-2
    gelu_approximate: str = "none"  # GPT-2 weights need "tanh"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _require_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets "
                f"n_embd / n_head dimensions; try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        _require_float("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be true or false, got {self.bias!r}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")
        _require_float("layer_norm_eps", self.layer_norm_eps, 0.0, 1.0, lo_open=True)
        if self.block_size > MAX_BLOCK_SIZE:
            raise ValueError(
                f"block_size {self.block_size} is too long for this explorer (at most {MAX_BLOCK_SIZE}): "
                f"attention patterns grow with its square"
            )
        n = self.n_params
        if n > MAX_PARAMS:
            raise ValueError(
                f"this model would have {n / 1e9:.1f} B parameters ({n * 4 / 2**30:.0f} GiB in float32), "
                f"more than the {MAX_PARAMS / 1e9:.0f} B this explorer supports; reduce n_layer, n_embd or vocab_size"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_params(self) -> int:
        """Parameter count (embeddings included, tied unembedding counted once)."""
        d, b = self.n_embd, int(self.bias)
        ln = d * (1 + b)
        attn = d * 3 * d + 3 * d * b + d * d + d * b
        mlp = d * 4 * d + 4 * d * b + 4 * d * d + d * b
        return self.vocab_size * d + self.block_size * d + self.n_layer * (2 * ln + attn + mlp) + ln


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Optimisation settings (AdamW, linear warmup then cosine decay to ``min_lr``).

    Steps count optimizer updates. ``log_interval``: a history row every N steps;
    ``eval_interval``: a validation loss (and a generated sample) every N steps;
    ``checkpoint_interval``: resumable state written every N steps (and at the end).
    ``schedule="time"`` makes the cosine follow the wall-clock budget ``max_seconds`` (the
    decay ends when time runs out; such runs are not bit-for-bit reproducible).
    """

    batch_size: int = 12
    learning_rate: float = 1e-3
    max_steps: int = 2000
    warmup_steps: int = 100
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0          # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    beta1: float = 0.9
    beta2: float = 0.99
    log_interval: int = 10
    checkpoint_interval: int = 500
    max_seconds: float | None = None   # wall-clock budget; None = no limit
    early_stopping_patience: int | None = None  # evaluations without val improvement; None = off
    sample_tokens: int = 200        # length of the sample generated at each evaluation (0 = none)
    device: str = "auto"            # auto | cpu | cuda | mps
    num_threads: int | None = None  # CPU threads for training; None = chosen by the trainer
    schedule: str = "steps"         # steps | time: what the cosine decay follows
    snapshots: int = 20             # weight snapshots kept for time travel (log-spaced; 0 = none)
    save_best: bool = True          # keep best.safetensors, the weights at the best val loss
    keep_resume_state: bool = True  # False: delete resume.safetensors once the run finishes
    precision: str = "auto"         # auto (bf16 autocast on a CUDA GPU that has it, else fp32) | fp32 | bf16

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "eval_interval", "eval_iters", "log_interval",
                     "checkpoint_interval"):
            _require_int(name, getattr(self, name))
        _require_int("warmup_steps", self.warmup_steps, 0)
        _require_int("seed", self.seed, 0)
        _require_int("sample_tokens", self.sample_tokens, 0)
        _require_int("snapshots", self.snapshots, 0)
        for name in ("save_best", "keep_resume_state"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _require_float("learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)
        _require_float("min_lr", self.min_lr, 0.0, 10.0)
        if self.min_lr > self.learning_rate:
            raise ValueError(
                f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate}): "
                f"the schedule decays from learning_rate down to min_lr"
            )
        _require_float("weight_decay", self.weight_decay, 0.0, 10.0)
        _require_float("grad_clip", self.grad_clip, 0.0, 1e6)
        _require_float("beta1", self.beta1, 0.0, 1.0, hi_open=True)
        _require_float("beta2", self.beta2, 0.0, 1.0, hi_open=True)
        if self.max_seconds is not None:
            _require_float("max_seconds", self.max_seconds, 0.0, 1e9, lo_open=True)
        if self.early_stopping_patience is not None:
            _require_int("early_stopping_patience", self.early_stopping_patience)
        if self.device not in ("auto", "cpu", "cuda", "mps") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.num_threads is not None:
            _require_int("num_threads", self.num_threads)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.schedule not in ("steps", "time"):
            raise ValueError(f"schedule must be 'steps' or 'time', got {self.schedule!r}")
        if self.schedule == "time" and self.max_seconds is None:
            raise ValueError("schedule='time' decays the learning rate over max_seconds; set max_seconds "
                             "(e.g. 60) or use schedule='steps'")
