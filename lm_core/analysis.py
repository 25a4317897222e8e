"""Derived views of a model's insides: head scores, entropy, logit lens, PCA, ablation, mechanics.

Pure functions over tensors or a :class:`~lm_core.model.GPT`; they return plain tensors, numpy
arrays or pandas DataFrames, run under ``torch.no_grad()`` in eval mode (the model's mode is
restored afterwards) and take one sequence (batch 1). Attention patterns are indexed
``[..., query, key]``: row ``i`` is the distribution of query position ``i`` over key positions
``0 .. i`` (the causal mask makes everything right of the diagonal 0).

Shapes: L layers, H heads, T positions, D ``n_embd``, Dh head size, V vocabulary, k a count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from .embeddings import position_embeddings, token_embeddings
from .model import GPT

__all__ = [
    "HEAD_SCORE_KINDS",
    "LogitLens",
    "ablate_heads",
    "all_head_scores",
    "attention_entropy",
    "attention_patterns",
    "attention_walkthrough",
    "cosine_similarity_matrix",
    "detection_pattern",
    "head_ablation_effects",
    "head_scores",
    "head_scores_table",
    "induction_score",
    "is_pattern_name",
    "kv_groups",
    "logit_lens_at",
    "kv_head_of",
    "logit_lens",
    "loss_on",
    "nearest_neighbours",
    "pca",
    "position_embeddings",
    "probe_head_scores",
    "probe_token_ids",
    "procrustes_align",
    "repeated_random_tokens",
    "residual_norms",
    "rotary_profile",
    "token_embeddings",
]

# The ideal patterns :func:`detection_pattern` builds. The head *metrics* (these scores, entropy
# and every other per-head score the trainer records and the app shows) live in lm_core.metrics.
HEAD_SCORE_KINDS = ("previous_token", "duplicate_token", "induction")


# -- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def _inference(model: GPT) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the block; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _as_idx(model: GPT, idx) -> torch.Tensor:
    """``list[int]``, ``[T]`` or ``[1, T]`` -> LongTensor ``[1, T]`` on the model's device, checked."""
    if isinstance(idx, torch.Tensor):
        t = idx.detach()
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() != 2 or t.shape[0] != 1:
            raise ValueError(
                f"analysis takes one sequence: token ids must be [T] or [1, T], got {tuple(idx.shape)}"
            )
        t = t.long()
    else:
        try:
            ids = [int(i) for i in idx]
        except (TypeError, ValueError):
            raise ValueError(f"token ids must be a list of ints or a LongTensor, got {type(idx).__name__}") from None
        t = torch.tensor([ids], dtype=torch.long)
    V, B = model.config.vocab_size, model.config.block_size
    if t.shape[1] == 0:
        raise ValueError("the token sequence is empty: give at least one token")
    if t.shape[1] > B:
        raise ValueError(
            f"sequence of {t.shape[1]} tokens is longer than the model's context (block_size={B}); "
            f"cut it to the last {B} tokens"
        )
    bad = t[(t < 0) | (t >= V)]
    if bad.numel():
        raise ValueError(f"token id(s) {bad[:5].tolist()} are outside the vocabulary (0 .. {V - 1})")
    return t.to(model.device)


def _as_tokens(tokens) -> torch.Tensor:
    """``list[int]``, ``[T]`` or ``[1, T]`` -> LongTensor ``[T]`` on the CPU."""
    t = torch.as_tensor(tokens if isinstance(tokens, torch.Tensor) else list(tokens), dtype=torch.long)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"tokens must be one sequence, [T] or [1, T], got shape {tuple(t.shape)}")
    return t.cpu()


def _check_layer_head(model: GPT, layer: int, head: int | None = None) -> None:
    L, H = model.config.n_layer, model.config.n_head
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < L:
        raise ValueError(f"layer {layer!r} does not exist: this model has layers 0 .. {L - 1}")
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < H):
        raise ValueError(f"head {head!r} does not exist: this model has heads 0 .. {H - 1} per layer")


def is_pattern_name(name: str) -> bool:
    """True for the hook names of attention patterns: a ``names`` predicate for ``run_with_cache``."""
    return name.endswith("attn.hook_pattern")


_is_pattern_name = is_pattern_name


def attention_patterns(source) -> torch.Tensor:
    """Every layer's attention pattern as one float CPU tensor ``[L, H, T, T]`` (query rows, key columns).

    ``source`` is an :class:`ActivationCache` of one sequence (batch 1) holding the patterns, or a
    tensor ``[L, H, T, T]`` / ``[H, T, T]`` / ``[T, T]`` (one layer / one head)."""
    if isinstance(source, Mapping):
        pats = []
        while f"blocks.{len(pats)}.attn.hook_pattern" in source:
            pats.append(source[f"blocks.{len(pats)}.attn.hook_pattern"])
        if not pats:
            raise ValueError(
                "the cache holds no attention patterns; capture them with run_with_cache(idx) "
                "(names=None) or names including 'blocks.0.attn.hook_pattern'"
            )
        if pats[0].shape[0] != 1:
            raise ValueError(f"pass a cache of one sequence (batch 1), got batch {pats[0].shape[0]}")
        p = torch.stack([x[0] for x in pats])  # (L, H, T, T)
    elif isinstance(source, torch.Tensor):
        p = source
        while p.dim() < 4:  # [T, T] one head, [H, T, T] one layer
            p = p.unsqueeze(0)
        if p.dim() != 4:
            raise ValueError(
                f"attention patterns must be [L, H, T, T], [H, T, T] or [T, T], got shape {tuple(source.shape)}"
            )
    else:
        raise ValueError(f"expected an ActivationCache or a pattern tensor, got {type(source).__name__}")
    if p.shape[-1] != p.shape[-2]:
        raise ValueError(
            f"patterns must be square (query x key, no KV cache), got {p.shape[-2]} x {p.shape[-1]}"
        )
    return p.detach().float().cpu()


_stack_patterns = attention_patterns


# -- head scores (TransformerLens' detect_head) ---------------------------------------------


def detection_pattern(tokens, kind: str) -> torch.Tensor:
    """The ideal pattern ``[T, T]`` (query row, key column) of a head of type ``kind``.

    As TransformerLens' ``head_detector`` builds them, with 1 where such a head would look:

    * ``previous_token``: query ``i`` -> key ``i - 1`` (row 0 is empty).
    * ``duplicate_token``: query ``i`` -> every earlier key ``j < i`` with ``tokens[j] == tokens[i]``.
    * ``induction``: query ``i`` -> key ``j + 1`` for every ``j < i`` with ``tokens[j] == tokens[i]``:
      the token that followed an earlier occurrence of the current token.
    """
    t = _as_tokens(tokens)
    T = t.numel()
    if kind == "previous_token":
        return torch.diag(torch.ones(T - 1), diagonal=-1) if T > 1 else torch.zeros(1, 1)
    dup = (t.unsqueeze(0) == t.unsqueeze(1)).float().tril(diagonal=-1)  # (T, T) [i, j] = same token, j < i
    if kind == "duplicate_token":
        return dup
    if kind == "induction":
        ind = torch.zeros(T, T)
        ind[:, 1:] = dup[:, :-1]  # shift right: the key after each earlier duplicate
        return ind.tril()
    raise ValueError(f"unknown head score kind {kind!r}; use one of {list(HEAD_SCORE_KINDS)}")


def head_scores(
    pattern,
    tokens,
    kind: str,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    query_start: int = 0,
) -> torch.Tensor:
    """How much each head behaves like a ``kind`` head, ``[L, H]`` in ``[0, 1]``.

    ``pattern`` is an :class:`ActivationCache` of one sequence, or patterns ``[L, H, T, T]``
    (``[H, T, T]`` and ``[T, T]`` count as one layer / one head; query rows, key columns); ``tokens`` are that sequence's ids ``[T]``.

    TransformerLens' ``detect_head`` score with ``error_measure="mul"``::

        score = (pattern * detection).sum() / pattern.sum()

    with ``detection`` from :func:`detection_pattern`. Each pattern row sums to 1, so with the
    defaults this is the *mean over query rows of the attention mass a row puts on its target
    keys*. Rows with no target (position 0 for ``previous_token``; a token seen for the first
    time for ``duplicate_token``/``induction``) contribute 0 but still count in the mean, so on a
    sequence repeated twice a perfect induction head scores about 0.5 here.

    ``exclude_bos`` zeroes the attention to key 0 and ``exclude_current_token`` the diagonal
    before both sums (as in TransformerLens). ``query_start`` keeps only query rows
    ``query_start ..`` in both sums (see :func:`induction_score`).
    """
    p = _stack_patterns(pattern)  # (L, H, T, T)
    t = _as_tokens(tokens)
    T = p.shape[-1]
    if t.numel() != T:
        raise ValueError(f"{t.numel()} tokens given for patterns over {T} positions; pass the same sequence")
    if isinstance(query_start, bool) or not isinstance(query_start, int) or not 0 <= query_start < T:
        raise ValueError(f"query_start must be a position in 0 .. {T - 1}, got {query_start!r}")
    det = detection_pattern(t, kind)  # (T, T)
    if exclude_bos or exclude_current_token:
        p = p.clone()
        if exclude_bos:
            p[..., :, 0] = 0
        if exclude_current_token:
            p.diagonal(dim1=-2, dim2=-1).zero_()
    p, det = p[..., query_start:, :], det[query_start:, :]
    total = p.sum(dim=(-2, -1))  # (L, H)
    hit = (p * det).sum(dim=(-2, -1))  # (L, H)
    return torch.where(total > 0, hit / total.clamp_min(1e-30), torch.zeros_like(total))


def attention_entropy(pattern) -> torch.Tensor:
    """Mean over query rows of the entropy ``-Σ_k p log p`` (nats) of each head's attention.

    ``pattern``: ``[L, H, T, T]`` -> ``[L, H]``, ``[H, T, T]`` -> ``[H]`` (the two last axes,
    query and key, are reduced), or an :class:`ActivationCache` -> ``[L, H]``. Masked keys
    (probability 0) contribute 0. Row ``i`` can be at most ``log(i + 1)``: low means focused.
    """
    if isinstance(pattern, Mapping):
        p = _stack_patterns(pattern)
    elif isinstance(pattern, torch.Tensor) and pattern.dim() >= 2:
        p = pattern.detach().float().cpu()
    else:
        raise ValueError(f"expected patterns [..., T, T] or an ActivationCache, got {type(pattern).__name__}")
    ent = -torch.special.xlogy(p, p).sum(dim=-1)  # (..., T) entropy of each query row
    return ent.mean(dim=-1)


def repeated_random_tokens(
    vocab_size: int, seq_len: int, n_repeats: int = 2, seed: int = 0, batch: int = 1,
    token_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """A random sequence of ``seq_len`` ids repeated ``n_repeats`` times: LongTensor ``[batch, seq_len * n_repeats]``.

    The standard probe for induction heads: from the second copy on, every token has been
    seen before, and only a head that copies "what came next last time" can predict it.
    Ids are drawn uniformly (with replacement) from ``token_ids`` if given, else from
    ``[0, vocab_size)``, by a generator seeded with ``seed``.
    """
    for name, v in (("vocab_size", vocab_size), ("seq_len", seq_len), ("n_repeats", n_repeats), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    gen = torch.Generator().manual_seed(int(seed))
    if token_ids is None:
        rand = torch.randint(0, vocab_size, (batch, seq_len), generator=gen)  # (B, seq_len)
    else:
        pool = torch.as_tensor(list(token_ids), dtype=torch.long)
        if pool.numel() < 2 or pool.min() < 0 or pool.max() >= vocab_size:
            raise ValueError(f"token_ids must hold at least 2 ids in 0 .. {vocab_size - 1}, got {pool.numel()} "
                             f"id(s) in {pool.min().item() if pool.numel() else '-'} .. "
                             f"{pool.max().item() if pool.numel() else '-'}")
        rand = pool[torch.randint(0, pool.numel(), (batch, seq_len), generator=gen)]  # (B, seq_len)
    return rand.repeat(1, n_repeats)  # (B, seq_len * n_repeats)


def probe_token_ids(tokenizer) -> list[int] | None:
    """The ids a repeated-random-token probe should draw from for a model trained with ``tokenizer``.

    Every id but a character tokenizer's ``<unk>``: a model never sees ``<unk>`` in training,
    so its embedding is still the random initial one, and a probe full of it measures noise.
    ``None`` (every id) for tokenizers without an ``unk_id``.
    """
    unk = getattr(tokenizer, "unk_id", None)
    if unk is None:
        return None
    return [i for i in range(tokenizer.vocab_size) if i != unk]


# -- logit lens ---------------------------------------------------------------------------


@dataclass
class LogitLens:
    """What the model would predict if it stopped after each layer (``ln_final`` then unembed).

    Row ``r`` of every array is a layer boundary: ``labels[0] == "embed"`` (the residual stream
    before block 0: token + position embeddings), ``labels[l + 1] == f"block {l}"`` (after block
    ``l``). The last row is exactly the model's own output. Probabilities are softmax at
    temperature 1 over the whole vocabulary.
    """

    labels: list[str]              # L + 1 row names
    tokens: list[int]              # the T input ids
    top_ids: torch.Tensor          # [L+1, T, k] most likely next tokens at each position, best first
    top_probs: torch.Tensor        # [L+1, T, k] their probabilities
    true_next_prob: torch.Tensor   # [L+1, T-1] probability of the actual next token tokens[t + 1] at position t
    true_next_rank: torch.Tensor   # [L+1, T-1] its rank (0 = the top prediction)

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (layer boundary, position) with the top-1 token and true-next probability."""
        R, T, _ = self.top_ids.shape
        nxt = torch.full((R, T), float("nan"))
        nxt[:, : T - 1] = self.true_next_prob
        return pd.DataFrame({
            "layer": [lab for lab in self.labels for _ in range(T)],
            "position": list(range(T)) * R,
            "token": self.tokens * R,
            "top_id": self.top_ids[:, :, 0].flatten().numpy(),
            "top_prob": self.top_probs[:, :, 0].flatten().numpy(),
            "true_next_prob": nxt.flatten().numpy(),
        })


def logit_lens(model: GPT, idx, top_k: int = 5) -> LogitLens:
    """Apply ``model.ln_final`` and the unembedding (``model.lm_head``) to the residual stream at
    every layer boundary of ``idx`` (``list[int]``, ``[T]`` or ``[1, T]``). See :class:`LogitLens`."""
    idx = _as_idx(model, idx)
    L, V = model.config.n_layer, model.config.vocab_size
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}")
    k = min(top_k, V)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)]
    nxt = idx[0, 1:].cpu()  # (T-1,)
    top_ids, top_probs, true_p, true_rank = [], [], [], []
    with _inference(model):
        _, cache = model.run_with_cache(idx, names=names)
        for name in names:
            # one boundary at a time: [T, V] per row keeps memory at T x V (GPT-2: 50 257 columns)
            resid = cache[name].to(model.device)  # (1, T, D)
            probs = F.softmax(model.unembed(model.ln_final(resid))[0].float(), dim=-1).cpu()  # (T, V)
            tp, ti = probs.topk(k, dim=-1)  # (T, k)
            top_ids.append(ti)
            top_probs.append(tp)
            p_true = probs[:-1].gather(1, nxt.unsqueeze(1)).squeeze(1)  # (T-1,)
            true_p.append(p_true)
            true_rank.append((probs[:-1] > p_true.unsqueeze(1)).sum(dim=1))
    return LogitLens(
        labels=["embed"] + [f"block {l}" for l in range(L)],
        tokens=idx[0].tolist(),
        top_ids=torch.stack(top_ids),
        top_probs=torch.stack(top_probs),
        true_next_prob=torch.stack(true_p),
        true_next_rank=torch.stack(true_rank),
    )


@torch.no_grad()
def logit_lens_at(model: GPT, idx, position: int) -> torch.Tensor:
    """The whole next-token distribution at one ``position`` after every layer boundary, as the
    logit lens reads it (final norm, then the unembedding): ``[L + 1, V]`` float32 probabilities,
    rows as :func:`logit_lens`'s labels (the embeddings first, the model's own output last). For
    finding any token of a large vocabulary, where :func:`logit_lens` keeps only the top k."""
    idx = _as_idx(model, idx)
    T = idx.shape[1]
    if isinstance(position, bool) or not isinstance(position, int) or not -T <= position < T:
        raise ValueError(f"position must be a whole number in [0, {T}), got {position!r}")
    L = model.config.n_layer
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)]
    rows = []
    with _inference(model):
        _, cache = model.run_with_cache(idx, names=names)
        for name in names:
            resid = cache[name][:, position].to(model.device)  # (1, D)
            rows.append(F.softmax(model.unembed(model.ln_final(resid))[0].float(), dim=-1).cpu())  # (V,)
    return torch.stack(rows)


# -- geometry: PCA, Procrustes, neighbours --------------------------------------------------


def pca(x: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal components of the rows of ``x`` ``[N, D]`` (e.g. the token embeddings).

    Returns ``coords [N, k]`` (the centred rows projected on the components), ``components
    [k, D]`` (unit vectors, most variance first) and ``explained_variance_ratio [k]`` (share of
    the total variance along each). Computed with ``torch.linalg.svd`` of the centred data in
    float64 (of the D x D scatter matrix when N > 2 D: same result, much faster); signs are
    fixed so that the largest-magnitude entry of each component is positive, so the same data
    always gives the same picture.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"pca needs a matrix [N, D], got {getattr(x, 'shape', type(x).__name__)}")
    N, D = x.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(N, D):
        raise ValueError(f"k must be between 1 and min(N, D) = {min(N, D)} for data of shape {(N, D)}, got {k!r}")
    xc = x.detach().double().cpu()
    xc = xc - xc.mean(dim=0, keepdim=True)  # (N, D)
    if N > 2 * D:
        # many rows (a 50k-token vocabulary): the SVD of the D x D scatter matrix is much cheaper
        # and, in float64, as accurate for the leading components; its singular values are S**2
        _, S2, Vh = torch.linalg.svd(xc.T @ xc)  # (D,), (D, D)
        var = S2
    else:
        _, S, Vh = torch.linalg.svd(xc, full_matrices=False)  # Vh (min(N, D), D)
        var = S**2
    comps = Vh[:k].clone()  # (k, D)
    pivot = comps.abs().argmax(dim=1)  # (k,)
    signs = torch.sign(comps[torch.arange(k), pivot])
    comps *= torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(1)
    total = var.sum()
    ratio = var[:k] / total if total > 0 else torch.zeros(k, dtype=torch.float64)
    coords = xc @ comps.T  # (N, k)
    return coords.float(), comps.float(), ratio.float()


def procrustes_align(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rotate/reflect ``source`` ``[N, k]`` to best match ``target`` ``[N, k]`` (row i ↔ row i).

    Orthogonal Procrustes: ``R = argmin ||source @ R - target||`` over orthogonal ``R``, from
    the SVD of ``sourceᵀ target``. Returns ``source @ R`` ``[N, k]``: distances between rows are
    unchanged, so two training snapshots' embedding projections line up without jumping or
    flipping. No translation or scaling (PCA coordinates are already centred).
    """
    for name, m in (("source", source), ("target", target)):
        if not isinstance(m, torch.Tensor) or m.dim() != 2:
            raise ValueError(f"{name} must be a matrix [N, k], got {getattr(m, 'shape', type(m).__name__)}")
    if source.shape != target.shape:
        raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} must have the same shape")
    a, b = source.detach().double().cpu(), target.detach().double().cpu()
    U, _, Vh = torch.linalg.svd(a.T @ b)  # (k, k)
    return (a @ (U @ Vh)).to(source.dtype)


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows of ``x`` ``[N, D]`` -> ``[N, N]`` in ``[-1, 1]``.

    A zero row has similarity 0 with everything (itself included)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"expected a matrix [N, D], got {getattr(x, 'shape', type(x).__name__)}")
    u = F.normalize(x.detach().float(), dim=1, eps=1e-12)  # (N, D) unit rows
    return u @ u.T


def nearest_neighbours(emb: torch.Tensor, token_id: int, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of ``emb`` ``[V, D]`` most cosine-similar to row ``token_id``, itself excluded.

    Returns ``(ids [k], similarities [k])``, most similar first (``k`` is capped at ``V - 1``).
    """
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        raise ValueError(f"expected an embedding matrix [V, D], got {getattr(emb, 'shape', type(emb).__name__)}")
    V = emb.shape[0]
    if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < V:
        raise ValueError(f"token id {token_id!r} is outside the vocabulary (0 .. {V - 1})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    u = F.normalize(emb.detach().float(), dim=1, eps=1e-12)  # (V, D)
    sims = u @ u[token_id]  # (V,)
    sims[token_id] = float("-inf")
    vals, ids = sims.topk(min(k, V - 1))
    return ids, vals


def residual_norms(cache: Mapping[str, torch.Tensor], n_layer: int | None = None) -> torch.Tensor:
    """L2 norm of the residual stream per position, ``[L + 1, T]``.

    Row ``l < L`` is ``blocks.{l}.hook_resid_pre`` (row 0: the embeddings), row ``L`` the final
    ``blocks.{L-1}.hook_resid_post`` (before ``ln_final``). ``n_layer`` defaults to the number of
    layers found in the cache. Batch 1.
    """
    if n_layer is None:
        n_layer = 0
        while f"blocks.{n_layer}.hook_resid_pre" in cache:
            n_layer += 1
    if isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer < 1:
        raise ValueError(f"n_layer must be >= 1 and the cache must hold the residual stream, got n_layer={n_layer!r}")
    try:
        rows = [cache[f"blocks.{l}.hook_resid_pre"] for l in range(n_layer)]
        rows.append(cache[f"blocks.{n_layer - 1}.hook_resid_post"])
    except KeyError as e:
        raise ValueError(f"the cache lacks the residual stream ({e}); capture it with run_with_cache(idx)") from None
    return torch.stack([r[0].float().norm(dim=-1) for r in rows])  # (L+1, T)


# -- ablation -----------------------------------------------------------------------------


def _ablated(t: torch.Tensor, mode: str) -> torch.Tensor:
    """Zero ``t`` or replace it by its mean over positions (axis 1), same shape."""
    if mode == "zero":
        return torch.zeros_like(t)
    return t.mean(dim=1, keepdim=True).expand_as(t)


def ablate_heads(
    model: GPT,
    idx,
    heads: Iterable[tuple[int, int]] = (),
    mlp_layers: Iterable[int] = (),
    mode: str = "zero",
) -> torch.Tensor:
    """Logits ``[1, T, V]`` of ``idx`` with some heads and/or MLPs knocked out.

    A head ``(layer, head)`` is ablated at ``blocks.{layer}.attn.hook_z`` (its output before
    ``c_proj``, so the ``c_proj`` bias stays); an MLP layer at ``blocks.{layer}.hook_mlp_out``.
    ``mode="zero"`` sets the slice to 0; ``mode="mean"`` replaces it at every position by its
    mean over the positions of this input.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    idx = _as_idx(model, idx)
    by_layer: dict[int, list[int]] = {}
    for pair in heads:
        try:
            layer, head = pair
        except (TypeError, ValueError):
            raise ValueError(f"each head must be a (layer, head) pair, got {pair!r}") from None
        _check_layer_head(model, layer, head)
        by_layer.setdefault(layer, []).append(head)
    mlps = sorted(set(mlp_layers))
    for layer in mlps:
        _check_layer_head(model, layer)

    def z_hook(hs: list[int]):
        def fn(z: torch.Tensor, name: str) -> torch.Tensor:  # z (B, T, H, Dh)
            z = z.clone()
            z[:, :, hs] = _ablated(z[:, :, hs], mode)
            return z
        return fn

    def mlp_hook(t: torch.Tensor, name: str) -> torch.Tensor:  # (B, T, D)
        return _ablated(t, mode).clone()

    fwd = [(f"blocks.{l}.attn.hook_z", z_hook(hs)) for l, hs in by_layer.items()]
    fwd += [(f"blocks.{l}.hook_mlp_out", mlp_hook) for l in mlps]
    with _inference(model):
        return model.run_with_hooks(idx, fwd_hooks=fwd)


def loss_on(model: GPT, idx, logits: torch.Tensor | None = None) -> float:
    """Mean next-token cross-entropy (nats) of ``idx``: position ``t`` predicting ``idx[t + 1]``.

    ``logits`` ``[1, T, V]`` (e.g. from :func:`ablate_heads`) are scored instead of a fresh
    forward when given. Needs at least 2 tokens.
    """
    idx = _as_idx(model, idx)
    T = idx.shape[1]
    if T < 2:
        raise ValueError("the loss needs at least 2 tokens: one to read and one to predict")
    if logits is None:
        with _inference(model):
            logits = model(idx)
    if logits.dim() != 3 or logits.shape[:2] != idx.shape:
        raise ValueError(f"logits must be [1, {T}, V] for these tokens, got {tuple(logits.shape)}")
    with torch.no_grad():
        loss = F.cross_entropy(logits[0, :-1].float(), idx[0, 1:].to(logits.device))
    return float(loss)


def head_ablation_effects(model: GPT, idx, mode: str = "zero", heads=None,
                          base_loss: float | None = None) -> pd.DataFrame:
    """Loss of ``idx`` with each head ablated on its own: one row per head.

    Columns ``layer``, ``head``, ``loss`` (nats, with the head ablated) and ``loss_increase``
    (``loss`` minus the intact model's loss: how much the model relies on that head here).
    Costs one forward per head. ``heads`` (``[(layer, head), …]``, default every head) lets a
    caller sweep in chunks (a progress bar, a cancel button); ``base_loss`` (the intact loss,
    from the first chunk) spares each later chunk its intact forward.
    """
    idx = _as_idx(model, idx)
    base = loss_on(model, idx) if base_loss is None else float(base_loss)
    if heads is None:
        heads = [(l, h) for l in range(model.config.n_layer) for h in range(model.config.n_head)]
    rows = []
    for l, h in heads:
        loss = loss_on(model, idx, ablate_heads(model, idx, [(int(l), int(h))], mode=mode))
        rows.append({"layer": int(l), "head": int(h), "loss": loss, "loss_increase": loss - base})
    return pd.DataFrame(rows, columns=["layer", "head", "loss", "loss_increase"])


# -- mechanics walkthrough: lm_core.mechanics (every layout's steps; resolved lazily below) -----------

# -- head metrics live in lm_core.metrics (they build on the functions above) ---------------------

_FROM_METRICS = ("all_head_scores", "head_scores_table", "induction_score", "probe_head_scores")
_FROM_MECHANICS = ("attention_walkthrough", "kv_groups", "kv_head_of", "rotary_profile")


def __getattr__(name: str):
    # ``lm_core.analysis.probe_head_scores`` and friends keep working: resolved lazily, because
    # lm_core.metrics imports this module
    if name in _FROM_METRICS:
        from . import metrics

        return getattr(metrics, name)
    if name in _FROM_MECHANICS:  # lm_core.mechanics imports this module too
        from . import mechanics

        return getattr(mechanics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
