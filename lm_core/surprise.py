"""Where the model is surprised: the loss on each token of a text, for the transformer and for
an n-gram baseline, side by side.

Cross-entropy, the number training drives down, is the model's *surprise* at each true next
token: ``−ln p(true next token | the tokens before it)`` in nats. A token the model saw coming
costs almost nothing; a token it did not costs a lot. Comparing the transformer's surprise
with the bigram Markov chain's (which sees only the previous token) shows where looking further
back, through attention, pays.

Alignment, used everywhere here: a text of ``T`` tokens has ``T - 1`` predictions. Entry ``i``
of every per-token array belongs to token ``i + 1`` (the token being predicted), predicted from
tokens ``0..i``. The first token is never predicted.

Bits per character follow the trainer's convention for ``val_bpc``: mean nats per predicted
token ``/ ln 2 × tokens_per_char``, with ``tokens_per_char = T / len(text)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .ngram import NGramModels, ngram_name

__all__ = ["Surprise", "SurpriseComparison", "model_surprise", "ngram_surprise", "surprise",
           "compare_surprise"]

_LN2 = math.log(2.0)
_WINDOWS_PER_BATCH = 16
_NGRAM_CELLS = 1 << 22      # positions × vocabulary of n-gram distributions held at once


@dataclass(frozen=True)
class Surprise:
    """Per-token surprise of one model on one text (numpy arrays, ready to draw).

    Per-token arrays have ``T - 1`` rows: row ``i`` is about token ``i + 1``.
    """

    name: str                    # "transformer", "bigram Markov chain", …
    ids: np.ndarray              # [T] int64, every token of the text
    pieces: list[str]            # [T] display strings (whitespace made visible)
    losses: np.ndarray           # [T-1] float32, −ln p(token i+1 | tokens 0..i), nats
    true_probs: np.ndarray       # [T-1] float32, p(token i+1 | tokens 0..i) = exp(−loss)
    top_ids: np.ndarray          # [T-1, k] int64, the k most likely next tokens, most likely first
    top_probs: np.ndarray        # [T-1, k] float32, their probabilities (temperature 1)
    top_pieces: list[list[str]]  # [T-1][k] display strings of top_ids
    n_chars: int                 # characters of the text (for bits per character)
    total_nats: float = field(init=False)
    mean_nats: float = field(init=False)       # the usual loss: nats per predicted token
    bits_per_char: float = field(init=False)

    def __post_init__(self) -> None:
        total = float(np.sum(self.losses, dtype=np.float64))
        mean = total / len(self.losses)
        object.__setattr__(self, "total_nats", total)
        object.__setattr__(self, "mean_nats", mean)
        object.__setattr__(self, "bits_per_char", mean / _LN2 * len(self.ids) / max(1, self.n_chars))

    @property
    def total_bits(self) -> float:
        return self.total_nats / _LN2

    def alternatives(self, k: int | None = None) -> list[list[tuple[str, float]]]:
        """Per predicted token, the top ``k`` (default all kept) ``(piece, probability)`` pairs."""
        k = self.top_ids.shape[1] if k is None else k
        return [[(p, float(q)) for p, q in zip(pieces[:k], probs[:k])]
                for pieces, probs in zip(self.top_pieces, self.top_probs)]


@dataclass(frozen=True)
class SurpriseComparison:
    """The transformer and a baseline on the same text; ``gain`` [T-1] float32 is
    ``baseline.losses − model.losses``: the nats the transformer saves on each token (positive
    where looking further back helped, negative where the baseline guessed better)."""

    model: Surprise
    baseline: Surprise
    gain: np.ndarray

    def helps_most(self, k: int = 10) -> np.ndarray:
        """Rows (token ``i + 1``) with the largest gain, largest first: int64 [min(k, T-1)]."""
        return np.argsort(-self.gain, kind="stable")[:k].astype(np.int64)


def _ids_array(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    a = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(a) < 2:
        raise ValueError(f"surprise needs a text of at least 2 tokens (one to predict from, one to "
                         f"predict); this one has {len(a)}. Type a longer text.")
    return a


def _windows(T: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, first, end)`` per window ``ids[start:start + W]``: its predictions at positions
    ``first..end-1`` are used (each position exactly once, positions 0..T-2)."""
    if T <= block_size:
        return [(0, 0, T - 1)]
    starts = list(range(0, T - block_size + 1, stride))
    if starts[-1] != T - block_size:
        starts.append(T - block_size)
    out, done = [], 0
    for s in starts:
        end = min(s + block_size, T - 1)
        if end > done:
            out.append((s, done, end))
            done = end
    return out


def _pieces(tokenizer, ids: np.ndarray) -> list[str]:
    return list(tokenizer.pieces(ids.tolist())) if tokenizer is not None else [str(i) for i in ids]


def _top_pieces(tokenizer, top_ids: np.ndarray) -> list[list[str]]:
    flat = _pieces(tokenizer, top_ids.reshape(-1))
    k = top_ids.shape[1]
    return [flat[i * k:(i + 1) * k] for i in range(top_ids.shape[0])]


@torch.no_grad()
def model_surprise(model, ids: Any, top_k: int = 5, stride: int | None = None, tokenizer=None,
                   n_chars: int | None = None, name: str = "transformer") -> Surprise:
    """The transformer's surprise at each token of ``ids`` (list, numpy or LongTensor [T]).

    The model runs in eval mode (no dropout) on windows of at most ``block_size`` tokens. A text
    longer than that is scored with windows ``stride`` tokens apart (default ``block_size // 2``):
    every prediction then sees at least ``block_size − stride + 1`` tokens; ``stride=1`` gives
    every prediction the full ``block_size`` context (one window per token: slower).
    ``tokenizer`` fills the pieces (ids as text otherwise); ``n_chars`` defaults to ``T``.
    """
    a = _ids_array(ids)
    cfg = model.config
    if a.min() < 0 or a.max() >= cfg.vocab_size:
        raise ValueError(f"token id {int(a.max() if a.max() >= cfg.vocab_size else a.min())} is outside "
                         f"the model's vocabulary (0..{cfg.vocab_size - 1}); was the text encoded with "
                         "this model's tokenizer?")
    B = cfg.block_size
    stride = max(1, B // 2) if stride is None else int(stride)
    if not 1 <= stride <= B:
        raise ValueError(f"stride must be 1..block_size ({B}), got {stride}")
    k = max(1, min(int(top_k), cfg.vocab_size))
    T = len(a)
    device = next(model.parameters()).device
    ids_t = torch.from_numpy(a)
    losses = np.empty(T - 1, dtype=np.float32)
    top_ids = np.empty((T - 1, k), dtype=np.int64)
    top_probs = np.empty((T - 1, k), dtype=np.float32)
    windows = _windows(T, B, stride)
    was_training = model.training
    model.eval()
    try:
        for g in range(0, len(windows), _WINDOWS_PER_BATCH):
            group = windows[g:g + _WINDOWS_PER_BATCH]
            W = min(B, T)
            x = torch.stack([ids_t[s:s + W] for s, _, _ in group]).to(device)   # (nW, W)
            logits = model(x).float()                                           # (nW, W, V)
            for row, (s, first, end) in enumerate(group):
                lp = torch.log_softmax(logits[row, first - s:end - s], dim=-1)  # (n, V)
                target = ids_t[first + 1:end + 1].to(device)                    # (n,)
                losses[first:end] = (-lp.gather(1, target[:, None])[:, 0]).cpu().numpy()
                tp, ti = torch.topk(lp, k, dim=-1)                              # (n, k)
                top_probs[first:end] = tp.exp().cpu().numpy()
                top_ids[first:end] = ti.cpu().numpy()
    finally:
        model.train(was_training)
    return Surprise(name, a, _pieces(tokenizer, a), losses, np.exp(-losses).astype(np.float32),
                    top_ids, top_probs, _top_pieces(tokenizer, top_ids), T if n_chars is None else int(n_chars))


def ngram_surprise(models: NGramModels, ids: Any, n: int = 2, top_k: int = 5, tokenizer=None,
                   n_chars: int | None = None) -> Surprise:
    """The order-``n`` n-gram model's surprise at each token of ``ids`` (same rows as
    :func:`model_surprise`); default the bigram Markov chain."""
    a = _ids_array(ids)
    losses = models.token_losses(a, n)
    V = models.vocab_size
    k = max(1, min(int(top_k), V))
    T = len(a)
    top_ids = np.empty((T - 1, k), dtype=np.int64)
    top_probs = np.empty((T - 1, k), dtype=np.float32)
    rows = max(1, _NGRAM_CELLS // V)
    for t0 in range(1, T, rows):  # targets t0..t1-1, each with its n-1 tokens of context
        t1 = min(T, t0 + rows)
        d = models.distributions(a[max(0, t0 - (n - 1) - 1):t1], n)[-(t1 - t0):]   # (m, V)
        part = np.argpartition(-d, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        ti = np.take_along_axis(part, order, axis=1)
        top_ids[t0 - 1:t1 - 1] = ti
        top_probs[t0 - 1:t1 - 1] = np.take_along_axis(d, ti, axis=1)
    return Surprise(ngram_name(n), a, _pieces(tokenizer, a), losses.astype(np.float32),
                    np.exp(-losses).astype(np.float32), top_ids, top_probs, _top_pieces(tokenizer, top_ids),
                    T if n_chars is None else int(n_chars))


def _encode(tokenizer, text: str) -> np.ndarray:
    if not isinstance(text, str) or not text:
        raise ValueError("the text to inspect is empty; type at least two characters")
    return _ids_array(tokenizer.encode(text))


def surprise(model, tokenizer, text: str, top_k: int = 5, stride: int | None = None) -> Surprise:
    """:func:`model_surprise` of ``text`` encoded with ``tokenizer`` (unknown characters become
    ``<unk>``, which the model may well find surprising)."""
    return model_surprise(model, _encode(tokenizer, text), top_k, stride, tokenizer, len(text))


def compare_surprise(model, tokenizer, text: str, ngrams: NGramModels, n: int = 2, top_k: int = 5,
                     stride: int | None = None) -> SurpriseComparison:
    """The transformer and the order-``n`` baseline (fitted on the same tokenizer's ids, e.g.
    by :func:`lm_core.ngram.fit_ngrams` on the train split) on ``text``."""
    if ngrams.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the n-gram models have a vocabulary of {ngrams.vocab_size} tokens but the "
                         f"tokenizer has {tokenizer.vocab_size}; fit them with this run's tokenizer")
    a = _encode(tokenizer, text)
    m = model_surprise(model, a, top_k, stride, tokenizer, len(text))
    b = ngram_surprise(ngrams, a, n, top_k, tokenizer, len(text))
    return SurpriseComparison(m, b, (b.losses - m.losses).astype(np.float32))
