"""One forward, the activations a view needs: so callers never spell hook names themselves.

The app's inspection pages and its export bundle read the model through these functions; hook
names (TransformerLens', see :mod:`lm_core.hooks`) stay inside lm_core.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import analysis
from .model import GPT

__all__ = ["Inspection", "activation_cache", "inspect"]


def _pattern_or_resid(name: str) -> bool:
    return analysis.is_pattern_name(name) or name.endswith(("hook_resid_pre", "hook_resid_post"))


@dataclass
class Inspection:
    """What one forward over a text shows: float32 CPU tensors, batch dimension dropped."""

    logits: torch.Tensor        # [T, V] row t predicts token t + 1
    patterns: torch.Tensor      # [L, H, T, T] query rows, key columns
    resid_norms: torch.Tensor   # [L + 1, T] see analysis.residual_norms


@torch.no_grad()
def inspect(model: GPT, ids) -> Inspection:
    """Patterns, residual-stream norms and logits of ``ids`` (one sequence) in one forward, in eval mode."""
    idx = analysis._as_idx(model, ids)
    with analysis._inference(model):
        logits, cache = model.run_with_cache(idx, names=_pattern_or_resid)
    return Inspection(logits=logits[0].float().cpu(), patterns=analysis.attention_patterns(cache),
                      resid_norms=analysis.residual_norms(cache, model.config.n_layer).float())


@torch.no_grad()
def activation_cache(model: GPT, ids, max_bytes: int) -> tuple[dict[str, torch.Tensor], str]:
    """Every hook's activation on ``ids`` (batch 1) as float32 CPU tensors, or, when that is
    above ``max_bytes``, only the residual stream and the attention patterns; the note says which."""
    idx = analysis._as_idx(model, ids)
    with analysis._inference(model):
        _, cache = model.run_with_cache(idx)
    # clone: a hook's tensor may be another's (resid_post of block l is resid_pre of block l + 1),
    # and safetensors refuses tensors that share memory
    tensors = {name: cache[name].detach().float().cpu().clone() for name in cache.keys()}
    size = sum(t.numel() * 4 for t in tensors.values())
    if size <= max_bytes:
        return tensors, f"all {len(tensors)} hooks"
    keep = {k: v for k, v in tensors.items() if "resid" in k or analysis.is_pattern_name(k)}
    return keep, (f"the residual stream and attention patterns only ({len(keep)} of {len(tensors)} hooks: "
                  f"all of them would be {size / 2**20:.0f} MB)")
