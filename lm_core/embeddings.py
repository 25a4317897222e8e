"""The model's embedding matrices, read the same way for every model family.

Pages and tools ask for "the token embeddings" or "the learned position embeddings" here instead
of reaching for ``model.wte`` / ``model.wpe``: a family with rotary positions has no position
matrix (:func:`position_embeddings` returns ``None``), and a family whose parameters are named
otherwise changes this file only.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["position_embeddings", "token_embeddings"]


def _weight(module) -> torch.Tensor | None:
    w = getattr(module, "weight", None) if module is not None else None
    return w.detach().float().cpu() if isinstance(w, torch.Tensor) else None


def token_embeddings(model: nn.Module) -> torch.Tensor:
    """The token embedding matrix ``[V, D]`` (row ``i`` is token ``i``'s vector), float32 on the CPU."""
    w = _weight(getattr(model, "wte", None))
    if w is None:
        get = getattr(model, "get_input_embeddings", None)
        w = _weight(get()) if callable(get) else None
    if w is None:
        raise ValueError(f"{type(model).__name__} has no token embedding matrix (expected a `wte` embedding)")
    return w


def position_embeddings(model: nn.Module) -> torch.Tensor | None:
    """The learned position embedding matrix ``[block_size, D]`` (row ``i`` is position ``i``),
    float32 on the CPU; ``None`` for a model without learned absolute positions (rotary, …)."""
    return _weight(getattr(model, "wpe", None))
