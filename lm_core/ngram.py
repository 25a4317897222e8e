"""N-gram (Markov chain) baselines over token ids: the simplest language models there are.

An order-``n`` model predicts the next token from the previous ``n - 1`` tokens only: a
unigram (n = 1) ignores the context, a bigram (n = 2) is a Markov chain over tokens. They are
the yardstick for the transformer: whatever it does better than the 4-gram, it does by looking
further back (attention).

Smoothing: **interpolated Kneser-Ney** with one absolute discount per order (Chen & Goodman
1998, "An empirical study of smoothing techniques", §2.7; Jurafsky & Martin, SLP3 ch. 3.7).
For a context ``h`` (the last ``k`` tokens) and its shorter context ``h'`` (the last ``k - 1``)::

    P_k(w | h) = ( max(c_k(h, w) - D_k, 0) + D_k * N1+(h ·) * P_{k-1}(w | h') ) / c_k(h)
    P_k(w | h) = P_{k-1}(w | h')                    when the context h was never seen
    P_{-1}(w)  = 1 / V                              (uniform over the vocabulary)

where ``c_k(h) = Σ_w c_k(h, w)`` and ``N1+(h ·)`` is the number of distinct tokens seen after
``h``. The highest order of a model uses raw counts; every lower order uses *continuation
counts* ``c(h', w) = N1+(· h' w)``, the number of distinct tokens seen before ``h' w`` (a token
that follows many different contexts is a better guess in a new one than a frequent token that
only ever follows one: "Francisco"). ``D_k = n1 / (n1 + 2 n2)`` from the numbers of n-grams
counted once and twice at that order (Ney, Essen & Kneser 1994), kept inside [0.05, 0.95] so
every token keeps some probability and seen ones keep most of theirs. Because each level
subtracts exactly the mass it hands down, every context's distribution sums to 1 over the
vocabulary, and every token (even one never seen in training, like ``<unk>``) has p > 0, so the
loss is always finite.

Units are the trainer's: the fit uses the train split and the score the val split of
:func:`lm_core.data.split_text` (first 90% / last 10% of the text, cut at a character), the
loss is the mean cross-entropy in nats per predicted token, and bits per character is
``loss / ln 2 * tokens_per_char`` of that split, exactly as ``val_bpc`` in the history.
At the start of a text (fewer than ``n - 1`` tokens before the target) a model uses the
longest context it has, through its lower (continuation-count) levels; this touches only the
first ``n - 2`` predictions of a text.

Counting is vectorised numpy: an n-gram is one int64 key ``((t0 * V + t1) * V + t2) …``,
counted with ``np.bincount`` when ``V ** n`` is small (character vocabularies) and with
``np.unique`` otherwise; look-ups are ``np.searchsorted`` into the sorted keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NGRAM_NAMES", "MAX_ORDER", "NGramModels", "fit_ngrams", "score_baselines",
           "baseline_losses", "passed_at", "ngram_name"]

MAX_ORDER = 4
NGRAM_NAMES = {1: "unigram", 2: "bigram Markov chain", 3: "trigram", 4: "4-gram"}
_DISCOUNT_RANGE = (0.05, 0.95)
_BINCOUNT_MAX_BINS = 1 << 25        # count with bincount up to 32 M possible keys (256 MB of int64)
_CHUNK_LOOKUPS = 1 << 22            # positions × vocabulary scored at once by distributions()
_LN2 = math.log(2.0)


def ngram_name(n: int) -> str:
    """Display name of the order-``n`` model: "unigram", "bigram Markov chain", "trigram", "4-gram"."""
    return NGRAM_NAMES.get(n, f"{n}-gram")


def _as_ids(ids: Any, vocab_size: int, what: str = "ids") -> np.ndarray:
    """``ids`` (list, numpy or torch) as a 1-D int64 array of ids in ``[0, vocab_size)``."""
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be integer token ids, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise ValueError(f"token id {bad} in {what} is outside the vocabulary (0..{vocab_size - 1}); "
                         "was it made by a different tokenizer?")
    return a


def _ngram_keys(ids: np.ndarray, m: int, V: int) -> np.ndarray:
    """Key of every m-gram of ``ids``: [len(ids) - m + 1] int64, ``Σ_j ids[i + j] * V**(m-1-j)``."""
    keys = ids[: len(ids) - m + 1].copy()
    for j in range(1, m):
        keys *= V
        keys += ids[j: len(ids) - m + 1 + j]
    return keys


def _count(keys: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and their counts (bincount when the key space is small: O(N))."""
    if n_bins <= _BINCOUNT_MAX_BINS:
        c = np.bincount(keys, minlength=n_bins)
        uniq = np.flatnonzero(c)
        return uniq.astype(np.int64), c[uniq].astype(np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq, counts.astype(np.int64)


def _discount(counts: np.ndarray) -> float:
    n1 = int(np.count_nonzero(counts == 1))
    n2 = int(np.count_nonzero(counts == 2))
    d = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5
    return float(min(max(d, _DISCOUNT_RANGE[0]), _DISCOUNT_RANGE[1]))


@dataclass(frozen=True)
class _Level:
    """Counts of one order: (k+1)-grams ``(h, w)`` for contexts ``h`` of ``k`` tokens.

    Small key spaces (character vocabularies) also keep dense tables, so a look-up is one
    index instead of a binary search (about 10x faster when scoring millions of tokens).
    """

    k: int                    # context length
    keys: np.ndarray          # [G] sorted int64 keys of the (k+1)-grams
    counts: np.ndarray        # [G] raw or continuation counts (>= 1)
    ctx_keys: np.ndarray      # [C] sorted int64 keys of the contexts h (k-grams)
    ctx_total: np.ndarray     # [C] c(h) = Σ_w counts(h, w)
    ctx_types: np.ndarray     # [C] N1+(h ·): distinct w after h
    discount: float
    dense: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # counts [V**(k+1)], total, types [V**k]

    @classmethod
    def build(cls, k: int, keys: np.ndarray, counts: np.ndarray, V: int, discount: float | None) -> "_Level":
        ctx = keys // V                                    # sorted, since keys are
        ctx_keys, starts, types = np.unique(ctx, return_index=True, return_counts=True)
        total = np.add.reduceat(counts, starts) if len(counts) else counts
        d = _discount(counts) if discount is None else float(discount)
        dense = None
        if V ** (k + 1) <= _BINCOUNT_MAX_BINS and (len(counts) == 0 or counts.sum() < 2 ** 31):
            dc = np.zeros(V ** (k + 1), dtype=np.int32)
            dc[keys] = counts
            dt = np.zeros(V ** k, dtype=np.int32)
            dt[ctx_keys] = total
            dn = np.zeros(V ** k, dtype=np.int32)
            dn[ctx_keys] = types
            dense = (dc, dt, dn)
        return cls(k, keys, counts, ctx_keys, total.astype(np.int64), types.astype(np.int64), d, dense)

    def lookup(self, hkey: np.ndarray, w: np.ndarray, V: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(c(h, w), c(h), N1+(h ·))`` for context keys ``hkey`` and tokens ``w``; 0 if unseen."""
        if self.dense is not None:
            dc, dt, dn = self.dense
            return dc[hkey * V + w], dt[hkey], dn[hkey]
        if len(self.ctx_keys) == 0:
            z = np.zeros(len(w), dtype=np.int64)
            return z, z, z
        c_hw = _lookup(self.keys, self.counts, hkey * V + w)
        ci = np.minimum(np.searchsorted(self.ctx_keys, hkey), len(self.ctx_keys) - 1)
        hit = self.ctx_keys[ci] == hkey
        return c_hw, np.where(hit, self.ctx_total[ci], 0), np.where(hit, self.ctx_types[ci], 0)


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at ``query`` keys, 0 where a key is absent."""
    i = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
    return np.where(sorted_keys[i] == query, values[i], 0)


@dataclass(frozen=True)
class NGramModels:
    """Interpolated Kneser-Ney n-gram models of orders 1..``max_n``, fitted on one token stream.

    Made by :func:`fit_ngrams`; immutable, and a pure function of (ids, vocab_size, max_n,
    discount), so it caches well. ``n`` below is the order: 1 = unigram, 2 = bigram, …
    """

    vocab_size: int
    max_n: int
    n_tokens: int                          # length of the training stream
    raw: tuple[_Level, ...]                # raw[k]: raw counts with contexts of k tokens
    cont: tuple[_Level, ...]               # cont[k]: continuation counts, contexts of k tokens

    # -- the models -------------------------------------------------------------------------

    def _check_n(self, n: int) -> int:
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= self.max_n:
            raise ValueError(f"n-gram order {n!r} is not available; these models have orders 1..{self.max_n}")
        return int(n)

    def discounts(self, n: int) -> list[float]:
        """The discount ``D_k`` used at each level ``k = 0..n-1`` of the order-``n`` model."""
        n = self._check_n(n)
        return [(self.raw if k == n - 1 else self.cont)[k].discount for k in range(n)]

    def _probs(self, ctx: np.ndarray, w: np.ndarray, orders: Sequence[int]) -> dict[int, np.ndarray]:
        """P_n(w | ctx) for each order n in ``orders``: float64 [M] each.

        ``ctx`` [M, K] holds the K tokens before each target ``w`` [M] (K >= max(orders) - 1),
        left-padded with -1 where the text starts later. The orders share their lower levels
        (continuation counts), so asking for all of them costs little more than the highest.
        """
        V, top = self.vocab_size, max(orders)
        K = ctx.shape[1]
        p = np.full(len(w), 1.0 / V)                      # P_{-1}: uniform
        hkey = np.zeros(len(w), dtype=np.int64)
        valid = np.ones(len(w), dtype=bool)
        out: dict[int, np.ndarray] = {}
        for k in range(top):
            if k > 0:
                # the context grows by one token to the left: h = (ctx[-k], …, ctx[-1])
                col = ctx[:, K - k]
                valid &= col >= 0
                hkey = hkey + np.maximum(col, 0) * V ** (k - 1)
            if k + 1 in orders:                           # the order-(k+1) model: raw counts on top
                out[k + 1] = self._interpolate(self.raw[k], p, hkey, w, valid)
            if k + 1 < top:                               # lower level of the higher orders
                p = self._interpolate(self.cont[k], p, hkey, w, valid)
        return out

    def _interpolate(self, lvl: _Level, lower: np.ndarray, hkey: np.ndarray, w: np.ndarray,
                     valid: np.ndarray) -> np.ndarray:
        c_hw, c_h, n1 = lvl.lookup(hkey, w, self.vocab_size)
        seen = valid & (c_h > 0)
        d = lvl.discount
        mixed = (np.maximum(c_hw - d, 0.0) + d * n1 * lower) / np.maximum(c_h, 1)
        return np.where(seen, mixed, lower)

    def _prob(self, n: int, ctx: np.ndarray, w: np.ndarray) -> np.ndarray:
        return self._probs(ctx, w, (n,))[n]

    def _contexts(self, ids: np.ndarray, n: int) -> np.ndarray:
        """Context rows for targets ids[1:]: [len(ids) - 1, n - 1], -1 before the text starts."""
        pad = np.concatenate([np.full(n - 1, -1, dtype=np.int64), ids])
        if n == 1:
            return np.zeros((len(ids) - 1, 0), dtype=np.int64)
        win = np.lib.stride_tricks.sliding_window_view(pad, n - 1)  # [len(pad) - n + 2, n - 1]
        return win[1: len(ids)]

    def token_losses(self, ids: Any, n: int) -> np.ndarray:
        """−ln p(ids[t] | ids[:t]) for t = 1..len(ids)-1: float64 [len(ids) - 1], nats.

        Entry ``i`` is the loss on token ``i + 1`` (the first token has no context to be
        predicted from, as for the transformer). Each prediction sees at most ``n - 1`` tokens.
        """
        n = self._check_n(n)
        a = _as_ids(ids, self.vocab_size)
        if len(a) < 2:
            raise ValueError(f"scoring needs at least 2 tokens (one to predict from, one to predict); got {len(a)}")
        return self.token_losses_all(a, (n,))[n]

    def token_losses_all(self, ids: Any, orders: Sequence[int] | None = None) -> dict[int, np.ndarray]:
        """:meth:`token_losses` for several orders at once (default: all), sharing the work."""
        orders = tuple(range(1, self.max_n + 1)) if orders is None else tuple(self._check_n(n) for n in orders)
        a = _as_ids(ids, self.vocab_size)
        if len(a) < 2:
            raise ValueError(f"scoring needs at least 2 tokens (one to predict from, one to predict); got {len(a)}")
        ctx, w = self._contexts(a, max(orders)), a[1:]
        out = {n: np.empty(len(w)) for n in orders}
        for s in range(0, len(w), _CHUNK_LOOKUPS):      # bounded temporaries on a 50 MB corpus
            probs = self._probs(ctx[s: s + _CHUNK_LOOKUPS], w[s: s + _CHUNK_LOOKUPS], orders)
            for n in orders:
                out[n][s: s + len(probs[n])] = -np.log(probs[n])
        return out

    def loss(self, ids: Any, n: int) -> float:
        """Mean cross-entropy of the order-``n`` model on ``ids``, in nats per predicted token."""
        return float(self.token_losses(ids, n).mean())

    def next_token_probs(self, context_ids: Any, n: int) -> np.ndarray:
        """P_n(· | context): float64 [vocab_size], sums to 1. Only the last ``n - 1`` tokens of
        ``context_ids`` matter; an empty or short context uses the longest one available."""
        n = self._check_n(n)
        a = _as_ids(context_ids, self.vocab_size, "context_ids")[-(n - 1):] if n > 1 else np.zeros(0, np.int64)
        ctx = np.concatenate([np.full(n - 1 - len(a), -1, dtype=np.int64), a])
        V = self.vocab_size
        return self._prob(n, np.broadcast_to(ctx, (V, n - 1)), np.arange(V, dtype=np.int64))

    def distributions(self, ids: Any, n: int) -> np.ndarray:
        """P_n(· | ids[:t]) for t = 1..len(ids)-1: float64 [len(ids) - 1, vocab_size].

        Row ``i`` is the distribution the model predicted token ``i + 1`` from (the same rows
        as :meth:`token_losses`)."""
        n = self._check_n(n)
        a = _as_ids(ids, self.vocab_size)
        if len(a) < 2:
            raise ValueError(f"scoring needs at least 2 tokens (one to predict from, one to predict); got {len(a)}")
        ctx = self._contexts(a, n)
        V = self.vocab_size
        out = np.empty((len(ctx), V))
        step = max(1, _CHUNK_LOOKUPS // V)
        w = np.arange(V, dtype=np.int64)
        for s in range(0, len(ctx), step):
            c = ctx[s: s + step]
            rows = np.repeat(c, V, axis=0)                                   # [m * V, n - 1]
            out[s: s + len(c)] = self._prob(n, rows, np.tile(w, len(c))).reshape(len(c), V)
        return out


def fit_ngrams(train_ids: Any, vocab_size: int, max_n: int = MAX_ORDER,
               discount: float | None = None) -> NGramModels:
    """Count the n-grams of ``train_ids`` (orders 1..``max_n``) and return the smoothed models.

    ``discount`` None estimates ``D = n1 / (n1 + 2 n2)`` per order (clipped to [0.05, 0.95]);
    a number in (0, 1] is used at every order (handy for checking by hand).
    Raises ``ValueError`` for an order outside 1..4, a vocabulary too large for int64 keys at
    that order, fewer than 2 tokens, or ids outside the vocabulary.
    """
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    V = int(vocab_size)
    if not isinstance(max_n, (int, np.integer)) or not 1 <= max_n <= MAX_ORDER:
        raise ValueError(f"max_n must be 1..{MAX_ORDER}, got {max_n!r}")
    if V ** (max_n) >= 2 ** 63:
        raise ValueError(f"a vocabulary of {V:,} tokens is too large for {max_n}-gram keys in int64; "
                         f"use max_n <= {max(1, int(63 * math.log(2) / math.log(V)))}")
    if discount is not None and not 0.0 < float(discount) <= 1.0:
        raise ValueError(f"discount must be in (0, 1], got {discount!r}")
    ids = _as_ids(train_ids, V, "train_ids")
    if len(ids) < 2:
        raise ValueError(f"fitting n-grams needs at least 2 training tokens, got {len(ids)}")
    raw: list[_Level] = []
    uniq_by_len: dict[int, np.ndarray] = {}
    for m in range(1, max_n + 1):
        keys, counts = _count(_ngram_keys(ids, m, V), V ** m)
        uniq_by_len[m] = keys
        raw.append(_Level.build(m - 1, keys, counts, V, discount))
    cont: list[_Level] = []
    for m in range(1, max_n):  # continuation counts of m-grams: distinct left neighbours
        suffix = uniq_by_len[m + 1] % (V ** m)
        keys, counts = np.unique(suffix, return_counts=True)
        cont.append(_Level.build(m - 1, keys, counts.astype(np.int64), V, discount))
    return NGramModels(V, int(max_n), len(ids), tuple(raw), tuple(cont))


def score_baselines(models: NGramModels, train_split, val_split) -> list[dict[str, Any]]:
    """One row per order for :class:`lm_core.data.Split` pairs (``.ids``, ``.tokens_per_char``):
    ``n``, ``name``, ``val_loss``/``train_loss`` (nats/token) and ``val_bpc``/``train_bpc``
    (bits/char, the trainer's convention)."""
    rows = []
    val_losses = models.token_losses_all(val_split.ids)
    train_losses = models.token_losses_all(train_split.ids)
    for n in range(1, models.max_n + 1):
        val, train = float(val_losses[n].mean()), float(train_losses[n].mean())
        rows.append({"n": n, "name": ngram_name(n),
                     "val_loss": val, "val_bpc": val / _LN2 * val_split.tokens_per_char,
                     "train_loss": train, "train_bpc": train / _LN2 * train_split.tokens_per_char})
    return rows


def baseline_losses(tokenizer, text: str, max_n: int = MAX_ORDER, block_size: int = 1,
                    discount: float | None = None) -> list[dict[str, Any]]:
    """The n-gram baselines of ``text`` in one call: fit on the trainer's train split, score on
    its val split (see :func:`lm_core.data.split_text`; ``block_size`` only sets the minimum
    split length it checks). Rows as in :func:`score_baselines`, orders 1..``max_n``::

        [{"n": 1, "name": "unigram", "val_loss": 3.3, "val_bpc": 4.7, "train_loss": …}, …]
    """
    from .data import split_text

    train, val = split_text(text, tokenizer, block_size)
    models = fit_ngrams(train.ids, tokenizer.vocab_size, max_n=max_n, discount=discount)
    return score_baselines(models, train, val)


def passed_at(history, baselines: Sequence[dict[str, Any]], column: str = "val_loss") -> dict[str, int | None]:
    """The first logged step whose ``column`` (default ``val_loss``) is below each baseline's
    ``val_loss``, keyed by baseline name; None where the transformer has not passed it (yet).

    ``history`` is a DataFrame with ``step`` and ``column`` (NaN rows, steps without an
    evaluation, are skipped).
    """
    out: dict[str, int | None] = {b["name"]: None for b in baselines}
    if history is None or len(history) == 0 or column not in history or "step" not in history:
        return out
    step = np.asarray(history["step"], dtype=np.float64)
    loss = np.asarray(history[column], dtype=np.float64)
    ok = np.isfinite(loss) & np.isfinite(step)
    step, loss = step[ok], loss[ok]
    order = np.argsort(step, kind="stable")
    step, loss = step[order], loss[order]
    for b in baselines:
        below = np.flatnonzero(loss < float(b["val_loss"]))
        out[b["name"]] = int(step[below[0]]) if len(below) else None
    return out
