"""Pretrained weights: Hugging Face GPT-2 -> lm_core.GPT.

``transformers`` is an optional extra; it is imported only by :func:`load_pretrained`, and
:func:`gpt_from_hf` needs only an object with GPT-2's attribute layout.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .model import GPT

_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


def config_from_hf(hf_config) -> ModelConfig:
    """ModelConfig from a ``transformers.GPT2Config``; refuses variants this model cannot express."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"GPT-2 activation {act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or getattr(hf_config, "reorder_and_upcast_attn", False):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn are not supported")
    if not getattr(hf_config, "scale_attn_weights", True):
        raise ValueError("GPT-2 configs with scale_attn_weights=False are not supported")
    return ModelConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
        n_head=hf_config.n_head, n_embd=hf_config.n_embd, dropout=0.0, bias=True,
        gelu_approximate=_ACTIVATIONS[act], layer_norm_eps=float(hf_config.layer_norm_epsilon),
    )


def gpt_from_hf(hf_model) -> GPT:
    """Convert a ``GPT2LMHeadModel``. HF stores Conv1D weights as [in, out]: transpose them."""
    cfg = config_from_hf(hf_model.config)
    sd = {k: v.detach().float().cpu() for k, v in hf_model.state_dict().items()}
    out: dict[str, torch.Tensor] = {
        "wte.weight": sd["transformer.wte.weight"],
        "wpe.weight": sd["transformer.wpe.weight"],
        "ln_final.weight": sd["transformer.ln_f.weight"],
        "ln_final.bias": sd["transformer.ln_f.bias"],
    }
    for l in range(cfg.n_layer):
        src, dst = f"transformer.h.{l}.", f"blocks.{l}."
        for ln in ("ln_1", "ln_2"):
            out[f"{dst}{ln}.weight"] = sd[f"{src}{ln}.weight"]
            out[f"{dst}{ln}.bias"] = sd[f"{src}{ln}.bias"]
        for conv in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[f"{dst}{conv}.weight"] = sd[f"{src}{conv}.weight"].t().contiguous()
            out[f"{dst}{conv}.bias"] = sd[f"{src}{conv}.bias"]
    model = GPT(cfg)
    model.load_weights(out)
    return model.eval()
