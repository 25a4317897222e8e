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


def _require_bool(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, bool):
        extra = " (or null to follow bias)" if optional else ""
        raise ValueError(f"{name} must be true or false{extra}, got {value!r}")


def _require_choice(name: str, value: Any, choices: tuple[str, ...], why: str = "") -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}{why}, got {value!r}")


_ROPE_SCALING_KEYS = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Shape of a decoder-only transformer (names as in GPT-2 / nanoGPT, TransformerLens for d_*).

    The defaults are GPT-2's layout: LayerNorm, learned absolute positions, a GELU MLP 4 x wide,
    multi-head attention, biases everywhere, tied unembedding. The other switches express the
    layouts of today's open models (see ``lm_core.pretrained`` for the Hugging Face families):

    * ``norm``: "layernorm" (GPT-2, GPT-NeoX) or "rmsnorm" (Llama, Qwen, Mistral); ``layer_norm_eps``
      is the epsilon of either.
    * ``pos``: "learned" (a ``wpe`` table, GPT-2), "rotary" (RoPE, Su et al. 2021: q and k rotated
      by their absolute position, ``rope_base`` the wavelength base, ``rotary_pct`` the share of
      each head's dimensions rotated, GPT-NeoX rotates 25 %) or "none" (no position signal but the
      causal mask). ``rope_scaling``: None or Llama 3.1's ``{"rope_type": "llama3", "factor",
      "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}``.
    * ``mlp``: "gelu" (``c_fc`` -> GELU -> ``c_proj``) or "swiglu" (SiLU(``c_gate`` x) * ``c_fc`` x
      -> ``c_proj``, Shazeer 2020); ``d_mlp`` its hidden width (default 4 x n_embd).
    * ``n_kv_head``: key/value heads (default n_head: multi-head; fewer: grouped-query, 1:
      multi-query); each group of n_head / n_kv_head query heads shares one key/value head.
    * ``d_head``: size of each head (default n_embd / n_head; Qwen3 uses more).
    * ``parallel_residual``: attention and MLP both read the block's input (GPT-NeoX, GPT-J).
    * ``qk_norm``: an RMSNorm over each head's q and k before the rotation (Qwen3).
    * ``sliding_window``: each query sees at most this many most recent positions (Mistral).
    * ``tie_embeddings``: ``lm_head`` shares ``wte``'s matrix (GPT-2, SmolLM2) or has its own.
    * Biases: ``bias`` is the default for every part; ``attn_bias`` (q/k/v and output
      projection), ``qkv_bias`` (q/k/v only; Qwen2 has these and no other), ``mlp_bias`` and
      ``norm_bias`` (LayerNorm only; RMSNorm has none) override it when not None.
    """

    vocab_size: int = 66
    block_size: int = 64           # longest context the model sees
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True              # biases in Linear and LayerNorm layers, as GPT-2
    gelu_approximate: str = "none"  # GPT-2 weights need "tanh"
    layer_norm_eps: float = 1e-5   # epsilon of every norm (LayerNorm or RMSNorm)
    norm: str = "layernorm"        # layernorm | rmsnorm
    pos: str = "learned"           # learned | rotary | none
    rope_base: float = 10000.0
    rotary_pct: float = 1.0        # share of each head's dimensions that rotary rotates
    rope_scaling: dict | None = None  # None or Llama 3.1's {"rope_type": "llama3", ...}
    mlp: str = "gelu"              # gelu | swiglu
    d_mlp: int | None = None       # MLP hidden width; None = 4 * n_embd
    n_kv_head: int | None = None   # key/value heads; None = n_head
    d_head: int | None = None      # size of each head; None = n_embd // n_head
    parallel_residual: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    tie_embeddings: bool = True
    attn_bias: bool | None = None  # None = bias
    qkv_bias: bool | None = None   # None = attn_bias
    mlp_bias: bool | None = None   # None = bias
    norm_bias: bool | None = None  # None = bias (LayerNorm only)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _require_int(name, getattr(self, name))
        if self.d_head is None and self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets "
                f"n_embd / n_head dimensions; try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
                f" (or set d_head)"
            )
        for name in ("d_mlp", "n_kv_head", "d_head", "sliding_window"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name))
        if self.n_head % self.kv_heads:
            raise ValueError(
                f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): each key/value head "
                f"serves an equal group of query heads; try one of "
                f"{[k for k in range(1, self.n_head + 1) if self.n_head % k == 0]}"
            )
        _require_float("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _require_bool("bias", self.bias)
        for name in ("parallel_residual", "qk_norm", "tie_embeddings"):
            _require_bool(name, getattr(self, name))
        for name in ("attn_bias", "qkv_bias", "mlp_bias", "norm_bias"):
            _require_bool(name, getattr(self, name), optional=True)
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")
        _require_float("layer_norm_eps", self.layer_norm_eps, 0.0, 1.0, lo_open=True)
        _require_choice("norm", self.norm, ("layernorm", "rmsnorm"))
        if self.norm == "rmsnorm" and self.norm_bias:
            raise ValueError("norm_bias=true needs norm='layernorm': RMSNorm has no bias")
        _require_choice("pos", self.pos, ("learned", "rotary", "none"))
        _require_choice("mlp", self.mlp, ("gelu", "swiglu"))
        _require_float("rope_base", self.rope_base, 1.0, 1e12, lo_open=True)
        _require_float("rotary_pct", self.rotary_pct, 0.0, 1.0, lo_open=True)
        if self.pos == "rotary" and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise ValueError(
                f"rotary_pct={self.rotary_pct} of d_head={self.head_dim} rotates {self.rotary_dim} dimensions; "
                f"rotary needs an even number of them, at least 2"
            )
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if not isinstance(rs, dict) or rs.get("rope_type") != "llama3":
                raise ValueError(f"rope_scaling must be null or Llama 3.1's {{'rope_type': 'llama3', ...}}, got {rs!r}")
            missing = [k for k in _ROPE_SCALING_KEYS if k not in rs]
            if missing or set(rs) - set(_ROPE_SCALING_KEYS):
                raise ValueError(f"rope_scaling needs exactly the keys {list(_ROPE_SCALING_KEYS)}, got {sorted(rs)}")
            for k in _ROPE_SCALING_KEYS[1:]:
                _require_float(f"rope_scaling[{k!r}]", rs[k], 0.0, 1e9, lo_open=True)
            if rs["high_freq_factor"] <= rs["low_freq_factor"]:
                raise ValueError("rope_scaling's high_freq_factor must be larger than its low_freq_factor")
            if self.pos != "rotary":
                raise ValueError(f"rope_scaling applies to rotary positions; this config has pos={self.pos!r}")
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

    def __hash__(self) -> int:  # rope_scaling is a dict: hash the JSON form
        import json

        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # -- resolved values (None fields follow their defaults) -------------------------------

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.n_embd

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that rotary rotates (the first ones; 0 without rotary)."""
        return int(self.head_dim * self.rotary_pct) if self.pos == "rotary" else 0

    @property
    def use_qkv_bias(self) -> bool:
        return self.qkv_bias if self.qkv_bias is not None else self.use_attn_out_bias

    @property
    def use_attn_out_bias(self) -> bool:
        return self.attn_bias if self.attn_bias is not None else self.bias

    @property
    def use_mlp_bias(self) -> bool:
        return self.mlp_bias if self.mlp_bias is not None else self.bias

    @property
    def use_norm_bias(self) -> bool:
        if self.norm == "rmsnorm":
            return False
        return self.norm_bias if self.norm_bias is not None else self.bias

    @property
    def n_params(self) -> int:
        """Parameter count (embeddings included, a tied unembedding counted once)."""
        d, dh, h, hkv, f = self.n_embd, self.head_dim, self.n_head, self.kv_heads, self.mlp_dim
        norm = d * (1 + int(self.use_norm_bias))
        qkv = (h + 2 * hkv) * dh
        attn = d * qkv + qkv * int(self.use_qkv_bias) + h * dh * d + d * int(self.use_attn_out_bias)
        attn += 2 * dh * int(self.qk_norm)
        n_in = 2 if self.mlp == "swiglu" else 1
        mlp = n_in * (d * f + f * int(self.use_mlp_bias)) + f * d + d * int(self.use_mlp_bias)
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        emb += self.block_size * d if self.pos == "learned" else 0
        return emb + self.n_layer * (2 * norm + attn + mlp) + norm


FREEZE_CHOICES = ("embeddings", "all-but-last:K")


def parse_freeze(spec: str | None) -> tuple[str, int] | None:
    """``None`` / "none" -> None; "embeddings" -> ("embeddings", 0); "all-but-last:K" -> ("all-but-last", K).

    "embeddings" freezes the token (and learned position) embeddings; with tied embeddings that
    is the unembedding too. "all-but-last:K" freezes everything but the last K blocks, the final
    norm and an untied ``lm_head`` (K=0: only those train). Anything else raises ``ValueError``.
    """
    if spec is None or spec == "none":
        return None
    if spec == "embeddings":
        return ("embeddings", 0)
    if isinstance(spec, str) and spec.startswith("all-but-last:"):
        k = spec.split(":", 1)[1]
        if k.isdigit():
            return ("all-but-last", int(k))
    raise ValueError(f"freeze must be 'embeddings', 'all-but-last:K' (K blocks at the top keep training, "
                     f"e.g. all-but-last:2) or none, got {spec!r}")


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
    init_from: str | None = None    # fine-tuning: the pretrained model (hub name or folder) the run started from
    init_revision: str | None = None  # its hub revision (branch, tag or commit), if one was asked for
    freeze: str | None = None       # None | "embeddings" | "all-but-last:K": parameters that do not train

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
        for name in ("init_from", "init_revision"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ValueError(f"{name} must be a model name or folder (a non-empty string) or null, got {v!r}")
        if self.init_revision is not None and self.init_from is None:
            raise ValueError("init_revision picks a revision of init_from's model; set init_from too")
        parse_freeze(self.freeze)
        if self.schedule not in ("steps", "time"):
            raise ValueError(f"schedule must be 'steps' or 'time', got {self.schedule!r}")
        if self.schedule == "time" and self.max_seconds is None:
            raise ValueError("schedule='time' decays the learning rate over max_seconds; set max_seconds "
                             "(e.g. 60) or use schedule='steps'")
