"""Hugging Face causal LMs -> :class:`lm_core.GPT`: configs and weights of each family.

Families: GPT-2 (``gpt2``), Llama (``llama``: Llama 2/3.x, TinyLlama, SmolLM2), Mistral
(``mistral``), Qwen2 / Qwen2.5 (``qwen2``: q/k/v biases), Qwen3 (``qwen3``: q/k norm) and
GPT-NeoX (``gpt_neox``: Pythia; parallel residual, partial rotary, untied unembedding). Both
functions take a ``transformers`` config object or its ``config.json`` as a dict (a file written
by ``save_pretrained`` leaves out the class defaults: they are filled in here), so loading a
folder needs no ``transformers``. Anything outside these families, or a variant the model
cannot express (another activation, a RoPE scaling other than Llama 3.1's, sliding windows on
some layers only), is refused with a ``ValueError`` naming it.

Weights: GPT-2 stores ``Conv1D`` matrices ``[in, out]`` (transposed here); Llama-style models
keep q, k, v apart (concatenated into ``c_attn``); GPT-NeoX interleaves them per head
(``[h0: q k v, h1: q k v, ...]``, reordered to ``[q all heads, k, v]``). Hugging Face's rotary
already uses the "rotate half" pairing that :func:`lm_core.model.apply_rotary` uses, so no
permutation of q/k rows is needed and heads keep their order: pattern h is their head h.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from .config import MAX_BLOCK_SIZE, ModelConfig
from .model import GPT

__all__ = ["FAMILIES", "config_from_hf", "convert_state_dict", "gpt_from_hf"]

log = logging.getLogger(__name__)

FAMILIES = {
    "gpt2": "GPT-2", "llama": "Llama (Llama 2/3.x, TinyLlama, SmolLM2)", "mistral": "Mistral",
    "qwen2": "Qwen2 / Qwen2.5", "qwen3": "Qwen3", "gpt_neox": "GPT-NeoX (Pythia)",
}


def _unsupported(model_type: Any) -> ValueError:
    names = ", ".join(FAMILIES.values())
    return ValueError(f"model_type {model_type!r} is not supported: LM Lens converts {names} models")


def _as_dict(hf_config) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise ValueError(f"expected a transformers config or its config.json as a dict, got {type(hf_config).__name__}")


# -- GPT-2 --------------------------------------------------------------------------------

_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}

# GPT2Config's defaults: a config.json written by save_pretrained may leave these out.
_GPT2_DEFAULTS: dict[str, Any] = {
    "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
    "n_head": 12, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
}


def _get(hf_config, key: str) -> Any:
    """A field of a ``GPT2Config`` or of its ``config.json`` dict, with GPT-2's default."""
    if isinstance(hf_config, Mapping):
        value = hf_config.get(key, _GPT2_DEFAULTS[key])
    else:
        value = getattr(hf_config, key, _GPT2_DEFAULTS[key])
    return _GPT2_DEFAULTS[key] if value is None and key != "n_inner" else value


def _gpt2_config(hf_config) -> ModelConfig:
    """ModelConfig from a ``transformers.GPT2Config`` or its ``config.json`` as a dict.

    Refuses, with a ``ValueError`` naming the field, GPT-2 variants this model cannot express
    (another activation, a custom MLP width, cross-attention, untied unembedding, other
    attention scalings).
    """
    model_type = _get(hf_config, "model_type")
    if model_type != "gpt2":
        raise ValueError(f"model_type {model_type!r} is not GPT-2; only GPT-2-layout models can be imported")
    act = _get(hf_config, "activation_function")
    if act not in _ACTIVATIONS:
        raise ValueError(f"GPT-2 activation {act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    n_embd, n_inner = int(_get(hf_config, "n_embd")), _get(hf_config, "n_inner")
    if n_inner is not None and int(n_inner) != 4 * n_embd:
        raise ValueError(f"n_inner={n_inner} is not supported: this model's MLP is 4 x n_embd = {4 * n_embd} wide")
    if _get(hf_config, "scale_attn_by_inverse_layer_idx") or _get(hf_config, "reorder_and_upcast_attn"):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn are not supported")
    if not _get(hf_config, "scale_attn_weights"):
        raise ValueError("GPT-2 configs with scale_attn_weights=False are not supported")
    if _get(hf_config, "add_cross_attention"):
        raise ValueError("GPT-2 configs with add_cross_attention=True (encoder-decoder) are not supported")
    if not _get(hf_config, "tie_word_embeddings"):
        raise ValueError("GPT-2 configs with tie_word_embeddings=False are not supported: this model ties lm_head to wte")
    return ModelConfig(
        vocab_size=int(_get(hf_config, "vocab_size")), block_size=int(_get(hf_config, "n_positions")),
        n_layer=int(_get(hf_config, "n_layer")), n_head=int(_get(hf_config, "n_head")), n_embd=n_embd,
        dropout=0.0, bias=True, gelu_approximate=_ACTIVATIONS[act],
        layer_norm_eps=float(_get(hf_config, "layer_norm_epsilon")),
    )


def _gpt2_weights(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensor names -> ours (``transformer.`` prefix optional, as in hub files)."""
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v.detach().float().cpu()
          for k, v in sd.items()}
    pairs = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
             "ln_final.weight": "ln_f.weight", "ln_final.bias": "ln_f.bias"}
    conv = {}
    for l in range(cfg.n_layer):
        src, dst = f"h.{l}.", f"blocks.{l}."
        for ln in ("ln_1", "ln_2"):
            pairs[f"{dst}{ln}.weight"] = f"{src}{ln}.weight"
            pairs[f"{dst}{ln}.bias"] = f"{src}{ln}.bias"
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            conv[f"{dst}{name}.weight"] = f"{src}{name}.weight"  # Conv1D [in, out]
            pairs[f"{dst}{name}.bias"] = f"{src}{name}.bias"
    missing = sorted(v for v in [*pairs.values(), *conv.values()] if v not in sd)
    if missing:
        raise ValueError(
            f"the GPT-2 weights lack {len(missing)} tensor(s), e.g. {missing[:3]}; "
            f"is this a GPT-2 checkpoint with n_layer={cfg.n_layer}?"
        )
    head = sd.get("lm_head.weight")
    if head is not None and not torch.equal(head, sd["wte.weight"]):
        raise ValueError("lm_head.weight differs from wte.weight: untied GPT-2 variants are not supported")
    out = {ours: sd[theirs] for ours, theirs in pairs.items()}
    out.update({ours: sd[theirs].t().contiguous() for ours, theirs in conv.items()})  # -> [out, in]
    return out


# -- Llama, Mistral, Qwen2, Qwen3, GPT-NeoX -----------------------------------------------

# Each class's defaults (transformers 5.x) for the keys read below: config.json files written by
# save_pretrained leave out whatever equals them.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, sliding_window=4096),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
                  sliding_window=4096, max_window_layers=28),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    "gpt_neox": dict(vocab_size=50432, hidden_size=6144, intermediate_size=24576, num_hidden_layers=44,
                     num_attention_heads=64, hidden_act="gelu", max_position_embeddings=2048,
                     layer_norm_eps=1e-5, use_parallel_residual=True, tie_word_embeddings=False,
                     attention_bias=True, rotary_pct=0.25, rotary_emb_base=10000),
}
_COMMON = dict(hidden_act="silu", rope_theta=10000.0, num_key_value_heads=None, head_dim=None,
               attention_bias=False, mlp_bias=False, sliding_window=None, use_sliding_window=False,
               layer_types=None, max_window_layers=None)
_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class _Reader:
    """Fields of one family's config dict, with that class's defaults for missing or null keys."""

    def __init__(self, d: dict[str, Any], model_type: str) -> None:
        self.d, self.defaults = d, {**_COMMON, **_DEFAULTS[model_type]}
        self.family = FAMILIES[model_type]

    def __call__(self, key: str) -> Any:
        v = self.d.get(key)
        return self.defaults.get(key) if v is None else v


def _rope(get: _Reader, default_pct: float) -> dict[str, Any]:
    """rope_base, rotary_pct, rope_scaling from transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` / ``rope_scaling`` / ``rotary_pct`` keys."""
    params = get.d.get("rope_parameters") or {}
    legacy = get.d.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(legacy, dict) or "full_attention" in params:
        raise ValueError(f"this {get.family} config has per-layer rope parameters, which LM Lens does not support")
    merged = {**legacy, **params}
    base = merged.get("rope_theta", get.d.get("rope_theta") or get.d.get("rotary_emb_base")
                      or get.defaults.get("rotary_emb_base") or get("rope_theta"))
    pct = merged.get("partial_rotary_factor", get.d.get("partial_rotary_factor", get.d.get("rotary_pct", default_pct)))
    kind = merged.get("rope_type", merged.get("type", "default"))
    scaling = None
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {"rope_type": "llama3", **{k: merged[k] for k in keys}}
    elif kind != "default":
        raise ValueError(f"RoPE scaling {kind!r} of this {get.family} model is not supported "
                         f"(only Llama 3.1's 'llama3' scaling is)")
    return dict(rope_base=float(base), rotary_pct=float(pct), rope_scaling=scaling)


def _block_size(get: _Reader) -> int:
    n = int(get("max_position_embeddings"))
    if n > MAX_BLOCK_SIZE:
        log.info("%s context of %d positions capped at %d (rotary positions: only a limit on the input)",
                 get.family, n, MAX_BLOCK_SIZE)
    return min(n, MAX_BLOCK_SIZE)


def _window(get: _Reader, model_type: str, n_layer: int, block_size: int) -> int | None:
    """One sliding window for every layer, or None; a window on some layers only is refused."""
    window = get.d.get("sliding_window") if model_type != "mistral" else get("sliding_window")
    if model_type in ("qwen2", "qwen3"):
        types = get.d.get("layer_types")
        if types is None:
            on = bool(get("use_sliding_window")) and window is not None
            first = int(get("max_window_layers")) if on else n_layer
            types = ["sliding_attention" if on and i >= first else "full_attention" for i in range(n_layer)]
        sliding = {t == "sliding_attention" for t in types}
        if sliding == {False}:
            return None
        if sliding == {True, False} and window is not None and window < block_size:
            raise ValueError(f"this {get.family} model uses a sliding window ({window}) on some layers only, "
                             f"which LM Lens does not support")
    if window is None or int(window) >= block_size:
        return None  # the window covers the whole context: plain causal attention
    return int(window)


def _llama_like_config(d: dict[str, Any], model_type: str) -> ModelConfig:
    get = _Reader(d, model_type)
    if get("hidden_act") != "silu":
        raise ValueError(f"{get.family} activation {get('hidden_act')!r} is not supported (only 'silu', SwiGLU)")
    n_layer, n_head = int(get("num_hidden_layers")), int(get("num_attention_heads"))
    n_embd = int(get("hidden_size"))
    head_dim = get("head_dim")
    d_head = int(head_dim) if head_dim is not None and int(head_dim) * n_head != n_embd else None
    if head_dim is None and n_embd % n_head:
        raise ValueError(f"{get.family} hidden_size {n_embd} is not divisible by num_attention_heads {n_head}")
    block_size = _block_size(get)
    qkv_bias = model_type == "qwen2" or bool(get("attention_bias"))
    attn_bias = bool(get("attention_bias")) if model_type in ("llama", "qwen3") else False
    return ModelConfig(
        vocab_size=int(get("vocab_size")), block_size=block_size, n_layer=n_layer, n_head=n_head,
        n_embd=n_embd, dropout=0.0, bias=False, layer_norm_eps=float(get("rms_norm_eps")),
        norm="rmsnorm", pos="rotary", **_rope(get, 1.0), mlp="swiglu", d_mlp=int(get("intermediate_size")),
        n_kv_head=int(get("num_key_value_heads") or n_head), d_head=d_head,
        qk_norm=model_type == "qwen3", sliding_window=_window(get, model_type, n_layer, block_size),
        tie_embeddings=bool(get("tie_word_embeddings")), attn_bias=attn_bias, qkv_bias=qkv_bias,
        mlp_bias=bool(get("mlp_bias")) if model_type == "llama" else False,
    )


def _neox_config(d: dict[str, Any]) -> ModelConfig:
    get = _Reader(d, "gpt_neox")
    act = get("hidden_act")
    if act not in _GELU:
        raise ValueError(f"GPT-NeoX activation {act!r} is not supported; expected one of {sorted(_GELU)}")
    n_embd, n_head = int(get("hidden_size")), int(get("num_attention_heads"))
    if n_embd % n_head:
        raise ValueError(f"GPT-NeoX hidden_size {n_embd} is not divisible by num_attention_heads {n_head}")
    rope = _rope(get, 0.25)
    head = n_embd // n_head
    if int(head * rope["rotary_pct"]) % 2:
        raise ValueError(f"GPT-NeoX rotary_pct {rope['rotary_pct']} of a {head}-dim head rotates an odd "
                         f"number of dimensions, which is not supported")
    bias = bool(get("attention_bias"))
    return ModelConfig(
        vocab_size=int(get("vocab_size")), block_size=_block_size(get), n_layer=int(get("num_hidden_layers")),
        n_head=n_head, n_embd=n_embd, dropout=0.0, bias=True, gelu_approximate=_GELU[act],
        layer_norm_eps=float(get("layer_norm_eps")), norm="layernorm", pos="rotary", **rope,
        mlp="gelu", d_mlp=int(get("intermediate_size")), parallel_residual=bool(get("use_parallel_residual")),
        tie_embeddings=bool(get("tie_word_embeddings")), attn_bias=bias, mlp_bias=True, norm_bias=True,
    )


def config_from_hf(hf_config) -> ModelConfig:
    """ModelConfig from a ``transformers`` config of a supported family, or its ``config.json`` dict.

    Raises ``ValueError`` naming what is not supported (another architecture, or a variant of a
    supported one that this model cannot express).
    """
    model_type = _as_dict(hf_config).get("model_type") if not hasattr(hf_config, "model_type") else hf_config.model_type
    if model_type == "gpt2":
        return _gpt2_config(hf_config)
    if model_type not in FAMILIES:
        raise _unsupported(model_type)
    d = _as_dict(hf_config)
    try:
        return _neox_config(d) if model_type == "gpt_neox" else _llama_like_config(d, model_type)
    except ValueError as e:  # e.g. too many parameters for this explorer
        if "not supported" in str(e):
            raise
        raise ValueError(f"this {FAMILIES[model_type]} model cannot be loaded: {e}") from None


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v.detach().float().cpu() for k, v in sd.items()}


def _take(sd: dict[str, torch.Tensor], names: list[str], family: str, cfg: ModelConfig) -> None:
    missing = [n for n in names if n not in sd]
    if missing:
        raise ValueError(f"the {family} weights lack {len(missing)} tensor(s), e.g. {missing[:3]}; "
                         f"is this a {family} checkpoint with n_layer={cfg.n_layer}?")


def _llama_weights(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = _strip(sd, "model.")
    out = {"wte.weight": sd.get("embed_tokens.weight"), "ln_final.weight": sd.get("norm.weight")}
    need = ["embed_tokens.weight", "norm.weight"]
    for l in range(cfg.n_layer):
        s, t = f"layers.{l}.", f"blocks.{l}."
        a, m = s + "self_attn.", s + "mlp."
        need += [a + f"{p}_proj.weight" for p in "qkvo"] + [m + f"{p}_proj.weight" for p in ("gate", "up", "down")]
        need += [s + "input_layernorm.weight", s + "post_attention_layernorm.weight"]
        if cfg.use_qkv_bias:
            need += [a + f"{p}_proj.bias" for p in "qkv"]
        if cfg.qk_norm:
            need += [a + "q_norm.weight", a + "k_norm.weight"]
        _take(sd, need, "Llama-style", cfg)
        out[t + "ln_1.weight"] = sd[s + "input_layernorm.weight"]
        out[t + "ln_2.weight"] = sd[s + "post_attention_layernorm.weight"]
        out[t + "attn.c_attn.weight"] = torch.cat([sd[a + f"{p}_proj.weight"] for p in "qkv"])
        if cfg.use_qkv_bias:
            out[t + "attn.c_attn.bias"] = torch.cat([sd[a + f"{p}_proj.bias"] for p in "qkv"])
        out[t + "attn.c_proj.weight"] = sd[a + "o_proj.weight"]
        if cfg.use_attn_out_bias:
            out[t + "attn.c_proj.bias"] = sd[a + "o_proj.bias"]
        if cfg.qk_norm:
            out[t + "attn.q_norm.weight"], out[t + "attn.k_norm.weight"] = sd[a + "q_norm.weight"], sd[a + "k_norm.weight"]
        for ours, theirs in (("c_gate", "gate"), ("c_fc", "up"), ("c_proj", "down")):
            out[f"{t}mlp.{ours}.weight"] = sd[f"{m}{theirs}_proj.weight"]
            if cfg.use_mlp_bias:
                out[f"{t}mlp.{ours}.bias"] = sd[f"{m}{theirs}_proj.bias"]
    _take(sd, need, "Llama-style", cfg)
    if not cfg.tie_embeddings:
        _take(sd, ["lm_head.weight"], "Llama-style", cfg)
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _neox_weights(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = _strip(sd, "gpt_neox.")
    if "embed_out.weight" not in sd and "lm_head.weight" in sd:  # transformers 5 renamed it in memory
        sd["embed_out.weight"] = sd["lm_head.weight"]
    H, Dh, D = cfg.n_head, cfg.head_dim, cfg.n_embd
    need = ["embed_in.weight", "final_layer_norm.weight", "final_layer_norm.bias"]
    for l in range(cfg.n_layer):
        s = f"layers.{l}."
        need += [s + f"{n}.{w}" for n in ("input_layernorm", "post_attention_layernorm", "attention.query_key_value",
                                           "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
                 for w in ("weight", "bias")]
    if not cfg.tie_embeddings:
        need.append("embed_out.weight")
    _take(sd, need, "GPT-NeoX", cfg)
    out = {"wte.weight": sd["embed_in.weight"], "ln_final.weight": sd["final_layer_norm.weight"],
           "ln_final.bias": sd["final_layer_norm.bias"]}
    for l in range(cfg.n_layer):
        s, t = f"layers.{l}.", f"blocks.{l}."
        for w in ("weight", "bias"):
            out[f"{t}ln_1.{w}"] = sd[f"{s}input_layernorm.{w}"]
            out[f"{t}ln_2.{w}"] = sd[f"{s}post_attention_layernorm.{w}"]
            out[f"{t}attn.c_proj.{w}"] = sd[f"{s}attention.dense.{w}"]
            out[f"{t}mlp.c_fc.{w}"] = sd[f"{s}mlp.dense_h_to_4h.{w}"]
            out[f"{t}mlp.c_proj.{w}"] = sd[f"{s}mlp.dense_4h_to_h.{w}"]
        # rows [h0: q k v, h1: q k v, ...] -> [q of every head, k, v]
        qkv_w = sd[s + "attention.query_key_value.weight"]
        out[t + "attn.c_attn.weight"] = qkv_w.view(H, 3, Dh, D).transpose(0, 1).reshape(3 * H * Dh, D)
        qkv_b = sd[s + "attention.query_key_value.bias"]
        out[t + "attn.c_attn.bias"] = qkv_b.view(H, 3, Dh).transpose(0, 1).reshape(3 * H * Dh)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["embed_out.weight"]
    return out


def convert_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, model_type: str) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict (or the tensors of its safetensors files) -> ours, float32 on the CPU."""
    if model_type == "gpt2":
        return _gpt2_weights(sd, cfg)
    if model_type in ("llama", "mistral", "qwen2", "qwen3"):
        return _llama_weights(sd, cfg)
    if model_type == "gpt_neox":
        return _neox_weights(sd, cfg)
    raise _unsupported(model_type)


def build(cfg: ModelConfig, sd: Mapping[str, torch.Tensor], model_type: str) -> GPT:
    model = GPT(cfg)
    model.load_weights(convert_state_dict(sd, cfg, model_type))
    return model.eval()


def gpt_from_hf(hf_model) -> GPT:
    """Convert a ``transformers`` causal LM of a supported family into an equivalent :class:`GPT`.

    Same logits and attention patterns (float32, CPU; eval mode); the Hugging Face model is not
    modified. Other architectures raise ``ValueError`` naming them.
    """
    hf_cfg = getattr(hf_model, "config", None)
    if hf_cfg is None or not hasattr(hf_model, "state_dict"):
        raise ValueError(f"expected a transformers model with a config, got {type(hf_model).__name__}")
    cfg = config_from_hf(hf_cfg)
    return build(cfg, hf_model.state_dict(), getattr(hf_cfg, "model_type", None))
