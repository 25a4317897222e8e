"""Real models that fit a laptop CPU, and what one costs before it is downloaded.

:data:`CATALOG` is a short curated list with the facts of each model's ``config.json`` kept here,
so its size, layout and cost show with no network. :func:`facts` turns any ``config.json``
(catalog or fetched, see :func:`lm_core.hub.fetch_config`) into the numbers a person weighs
before a download; :func:`estimate` says what inspecting it will cost in memory and time. The
estimate is arithmetic on the parameter count and a throughput, not a measurement of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ModelConfig
from .convert import config_from_hf
from .mechanics import layout

__all__ = ["CATALOG", "CatalogEntry", "Estimate", "ModelFacts", "catalog_entry", "estimate", "facts",
           "forward_flops", "INSPECT_TOKENS"]

INSPECT_TOKENS = 128       # the text length an estimate is for: a paragraph
CAPTURE_OVERHEAD = 1.5     # full capture vs a plain forward (DESIGN §5's bound)
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class CatalogEntry:
    """A curated model: its hub name, a one-line description, the ``config.json`` facts that
    :func:`lm_core.convert.config_from_hf` reads, and the download in bytes (weights + tokenizer)."""

    name: str
    title: str
    blurb: str
    config: dict[str, Any] = field(repr=False)
    download_bytes: int
    slow: bool = False           # big for a laptop CPU: loads in minutes, pages take seconds
    step_revisions: bool = False  # publishes training checkpoints as branches step0 … (Pythia)


_NEOX = dict(model_type="gpt_neox", max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000,
             vocab_size=50304, use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5,
             hidden_act="gelu", torch_dtype="float16")

CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("gpt2", "GPT-2 (124 M)", "OpenAI, 2019: the classic; LayerNorm, learned positions, GELU.",
                 dict(model_type="gpt2", n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257,
                      activation_function="gelu_new", layer_norm_epsilon=1e-5, n_inner=None,
                      tie_word_embeddings=True, torch_dtype="float32"),
                 download_bytes=548_105_171 + 1_355_256),
    CatalogEntry("HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M", "Hugging Face, 2024: a modern Llama layout at "
                 "GPT-2 size; RMSNorm, rotary, SwiGLU, grouped-query attention.",
                 dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, vocab_size=49152,
                      hidden_act="silu", attention_bias=False, mlp_bias=False, torch_dtype="bfloat16"),
                 download_bytes=269_060_552 + 2_104_556),
    CatalogEntry("EleutherAI/pythia-70m", "Pythia-70m", "EleutherAI, 2023: GPT-NeoX layout (parallel attention "
                 "+ MLP, partial rotary); 154 training checkpoints to travel through.",
                 dict(_NEOX, hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8),
                 download_bytes=166_049_099 + 2_113_738, step_revisions=True),
    CatalogEntry("EleutherAI/pythia-160m", "Pythia-160m", "Pythia at GPT-2 size: 12 layers × 12 heads; its "
                 "training checkpoints show induction heads forming.",
                 dict(_NEOX, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                 download_bytes=374_588_925 + 2_113_738, step_revisions=True),
    CatalogEntry("Qwen/Qwen2.5-0.5B", "Qwen2.5-0.5B", "Alibaba, 2024: a strong small model; RMSNorm, rotary, "
                 "SwiGLU, 14 query heads sharing 2 key/value heads, biases on q/k/v.",
                 dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, vocab_size=151936,
                      hidden_act="silu", use_sliding_window=False, sliding_window=32768, max_window_layers=24,
                      torch_dtype="bfloat16"),
                 download_bytes=988_097_824 + 7_031_645),
    CatalogEntry("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "TinyLlama-1.1B (chat) — slow",
                 "Llama 2 layout at 1.1 B parameters, tuned for chat (the base checkpoint is "
                 "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T). Slow on a laptop CPU.",
                 dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, vocab_size=32000,
                      hidden_act="silu", torch_dtype="bfloat16"),
                 download_bytes=2_200_119_864 + 1_842_767, slow=True),
)


def catalog_entry(name: str) -> CatalogEntry | None:
    """The curated entry named ``name`` (the hub name), or None."""
    return next((e for e in CATALOG if e.name == name), None)


@dataclass(frozen=True)
class ModelFacts:
    """What a person weighs before a download: size, layout, the bytes to fetch."""

    name: str
    config: ModelConfig
    n_params: int
    download_bytes: int
    download_known: bool     # False: estimated from the parameter count and the stored dtype
    dtype: str
    layout: str              # e.g. "RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query (…)"

    @property
    def kv_heads(self) -> int:
        return self.config.kv_heads


def facts(name: str, hf_config: dict[str, Any], download_bytes: int | None = None) -> ModelFacts:
    """The :class:`ModelFacts` of a ``config.json`` dict. Without ``download_bytes`` the download
    is estimated as parameters × the bytes of its stored dtype. Raises ``ValueError`` for a family
    LM Lens cannot load (saying which)."""
    cfg = config_from_hf(hf_config)
    n = cfg.n_params
    dtype = str(hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32")
    known = download_bytes is not None
    size = int(download_bytes) if known else n * _DTYPE_BYTES.get(dtype, 4)
    return ModelFacts(name, cfg, n, size, known, dtype, layout(cfg).summary())


def forward_flops(cfg: ModelConfig, tokens: int) -> float:
    """Floating-point operations of one forward over ``tokens`` positions: 2 per weight per
    token in the blocks and the unembedding, plus the attention scores and their weighted sum
    (2 × 2 × T² × head_dim per head and layer; the model computes the masked half too)."""
    d, h, dh, v = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.vocab_size
    emb = v * d * (1 if cfg.tie_embeddings else 2) + (cfg.block_size * d if cfg.pos == "learned" else 0)
    matmul_weights = cfg.n_params - emb + v * d  # the blocks, and the unembedding (tied or not)
    attention = 4 * tokens * tokens * dh * h * cfg.n_layer
    return 2.0 * matmul_weights * tokens + attention


@dataclass(frozen=True)
class Estimate:
    """What inspecting a model costs on this machine (an estimate, see :func:`estimate`)."""

    resident_bytes: int      # float32 weights + one full capture of ``tokens`` positions
    load_peak_bytes: int     # while loading: transformers' copy and ours side by side
    seconds: float           # one inspection (a forward with every activation captured)
    tokens: int


def estimate(cfg: ModelConfig, flops_per_s: float, tokens: int = INSPECT_TOKENS, dtype: str = "float32") -> Estimate:
    """Memory and time of one inspection of ``tokens`` positions, from the parameter count.

    Memory: LM Lens keeps weights in float32 (4 bytes each) plus the captured activations
    (residual stream, q/k/v/z, MLP, and the [H, T, T] patterns and scores of each layer); while
    loading, transformers' copy (``dtype``) and a float32 state dict sit beside it. Time:
    :func:`forward_flops` at ``flops_per_s`` (e.g. :func:`lm_core.timing.measure_matmul_flops`),
    × 1.5 for the capture. Real times vary with the machine's load and the text's length.
    """
    if flops_per_s <= 0:
        raise ValueError(f"flops_per_s must be positive, got {flops_per_s!r}")
    t = max(1, min(int(tokens), cfg.block_size))
    n = cfg.n_params
    weights = 4 * n
    per_layer = t * (6 * cfg.n_embd + 4 * cfg.n_head * cfg.head_dim + 2 * cfg.mlp_dim) + 2 * cfg.n_head * t * t
    capture = 4 * (cfg.n_layer * per_layer + 2 * t * cfg.vocab_size)
    peak = weights + capture + 4 * n + _DTYPE_BYTES.get(dtype, 4) * n
    seconds = forward_flops(cfg, t) / flops_per_s * CAPTURE_OVERHEAD
    return Estimate(int(weights + capture), int(peak), float(seconds), t)
