"""What the inspection pages compute on a model: attention, head scores, embeddings, logit lens,
the mechanics walkthrough. Plain functions over lm_core returning float32 numpy arrays (cache-
friendly); ``app/resources.py`` caches them by model key and input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import lm_core
from lm_core import analysis, capture, mechanics, metrics

# -- attention inspection ------------------------------------------------------------------


def inspect(model: lm_core.GPT, ids: list[int]) -> dict[str, np.ndarray]:
    """One forward with capture: patterns ``[L, H, T, T]``, every registered head metric as
    ``score/<name>`` ``[L, H]``, residual norms ``[L+1, T]`` and the top next-token guess per
    position (float32 numpy)."""
    seen = capture.inspect(model, ids)
    out: dict[str, np.ndarray] = {"patterns": seen.patterns.numpy()}
    for name, z in metrics.score_patterns(seen.patterns, ids).items():
        out[f"score/{name}"] = z.float().numpy()
    out["resid_norms"] = seen.resid_norms.numpy()
    top_p, top_i = torch.softmax(seen.logits, dim=-1).max(dim=-1)
    out["next_id"] = top_i.numpy().astype(np.int64)
    out["next_p"] = top_p.numpy().astype(np.float32)
    return out


def scores_table(ins: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per head: layer, head and every registered head metric (the CSV download)."""
    return metrics.head_scores_table({name: torch.from_numpy(ins[f"score/{name}"]) for name in metrics.HEAD_METRICS
                                      if f"score/{name}" in ins})


# -- embeddings -------------------------------------------------------------------------------


@torch.no_grad()
def embedding_projection(model: lm_core.GPT, reference: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """PCA of the token embedding matrix: ``coords [V, 3]``, ``coords2 [V, 2]`` and ``ratio [3]``.

    ``ratio`` is each component's share of the variance. With ``reference`` (the projection of
    the run's final weights, as returned here) the coordinates are rotated/reflected onto it
    (``analysis.procrustes_align``; 3D and 2D each on their own), so a token keeps its place
    between training steps instead of jumping or flipping; ``aligned`` is then 1.
    """
    w = analysis.token_embeddings(model)
    k = min(3, *w.shape)
    coords, _, ratio = analysis.pca(w, k=k)
    c = coords.numpy()
    if k < 3:
        c = np.pad(c, ((0, 0), (0, 3 - k)))
        ratio = torch.cat([ratio, torch.zeros(3 - k)])
    c2 = c[:, :2]
    aligned = 0.0
    if reference is not None and reference["coords"].shape == c.shape:
        c = analysis.procrustes_align(torch.from_numpy(c), torch.from_numpy(reference["coords"])).numpy()
        c2 = analysis.procrustes_align(torch.from_numpy(np.ascontiguousarray(c2)),
                                       torch.from_numpy(np.ascontiguousarray(reference["coords2"]))).numpy()
        aligned = 1.0
    return {"coords": c.astype(np.float32), "coords2": np.ascontiguousarray(c2, dtype=np.float32),
            "ratio": ratio.numpy().astype(np.float32), "aligned": np.float32(aligned)}


@torch.no_grad()
def neighbours(model: lm_core.GPT, token_id: int, k: int) -> tuple[list[int], np.ndarray]:
    ids, sims = analysis.nearest_neighbours(analysis.token_embeddings(model), int(token_id), int(k))
    return [int(i) for i in ids], sims.numpy().astype(np.float32)


def rotary_profile(model: lm_core.GPT) -> dict[str, np.ndarray] | None:
    """``lm_core.mechanics.rotary_profile``: rotary frequencies and the score of a fixed q·k by
    relative distance; None for a model without rotary positions."""
    return mechanics.rotary_profile(model)


@torch.no_grad()
def position_similarity(model: lm_core.GPT) -> np.ndarray | None:
    """Cosine similarity of every pair of learned position vectors ``[block_size, block_size]``;
    None for a model without learned positions (rotary and other relative schemes)."""
    positions = analysis.position_embeddings(model)
    if positions is None:
        return None
    return analysis.cosine_similarity_matrix(positions).numpy().astype(np.float32)


# -- logit lens --------------------------------------------------------------------------------


def logit_lens(model: lm_core.GPT, ids: list[int], top_k: int = 5) -> dict[str, np.ndarray]:
    """``analysis.logit_lens`` as numpy: ``top_ids``/``top_probs [R, T, k]`` (R = L + 1 layer
    boundaries, the last = the model's own output), ``true_p``/``true_rank [R, T-1]``, ``labels [R]``."""
    lens = analysis.logit_lens(model, list(ids), top_k=int(top_k))
    return {
        "labels": np.array(lens.labels),
        "top_ids": lens.top_ids.numpy().astype(np.int64),
        "top_probs": lens.top_probs.float().numpy().astype(np.float32),
        "true_p": lens.true_next_prob.float().numpy().astype(np.float32),
        "true_rank": lens.true_next_rank.numpy().astype(np.int64),
    }


def logit_lens_at(model: lm_core.GPT, ids: list[int], position: int) -> np.ndarray:
    """``analysis.logit_lens_at``: the whole distribution at ``position`` after each layer
    boundary, ``[L + 1, V]`` float32 (the token search of the Logit lens page)."""
    return analysis.logit_lens_at(model, list(ids), int(position)).numpy().astype(np.float32)


# -- mechanics --------------------------------------------------------------------------------


def walkthrough(model: lm_core.GPT, ids: list[int], layer: int, head: int) -> dict:
    """``lm_core.mechanics.attention_walkthrough`` as float32 numpy arrays (ints, the head group
    and the :class:`~lm_core.mechanics.Layout` kept)."""
    raw = mechanics.attention_walkthrough(model, ids, layer, head)
    out = {}
    for k, v in raw.items():
        out[k] = v.numpy() if isinstance(v, torch.Tensor) else v
    return out
