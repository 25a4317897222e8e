"""A whole vocabulary (50k tokens at real size) without flooding a chart: the top k of a
distribution, and any token found by what the user types, with its probability and rank.
Plain Python over numpy; the pages draw what these return.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lm_core.tokenizers import visible

MAX_MATCHES = 20   # rows a search shows at most


def top_k(probs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most likely token ids of ``probs [V]``, most likely first, and their probabilities.
    O(V) (``argpartition``), so a 50k vocabulary costs a fraction of a millisecond."""
    p = np.asarray(probs, dtype=np.float32).ravel()
    k = max(0, min(int(k), p.size))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    part = np.argpartition(-p, k - 1)[:k]
    order = part[np.argsort(-p[part], kind="stable")]
    return order.astype(np.int64), p[order]


def ranks(probs, ids: Sequence[int]) -> np.ndarray:
    """The rank of each of ``ids`` in ``probs [V]``: 1 = the most likely; tokens with equal
    probability share the best rank (1 + the number of tokens strictly more likely)."""
    p = np.asarray(probs, dtype=np.float32).ravel()
    sorted_p = np.sort(p)
    q = p[np.asarray(list(ids), dtype=np.int64)]
    return (p.size - np.searchsorted(sorted_p, q, side="right") + 1).astype(np.int64)


def _normalise(s: str) -> str:
    """What a typed query means: the visible marks (␣ ↵ ⇥) stand for the whitespace they show."""
    return str(s).replace("␣", " ").replace("↵", "\n").replace("⇥", "\t")


@functools.lru_cache(maxsize=4)
def _index(pieces: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Each piece with its whitespace marks undone, and lower-cased: built once per vocabulary."""
    norm = tuple(_normalise(p) for p in pieces)
    return norm, tuple(p.lower() for p in norm)


def find_tokens(query: str, pieces: Sequence[str], tokenizer=None, limit: int = MAX_MATCHES) -> list[int]:
    """Token ids matching what the user typed, best matches first (at most ``limit``).

    ``pieces`` are the vocabulary's display pieces (``tokenizer.pieces(range(V))``), so a query may
    use the visible marks or plain whitespace. Order: a token whose piece is exactly the query,
    then the same with a leading space (" the" when "the" was typed: how BPE writes a word after a
    space), then the tokens the query encodes to (``tokenizer``, when given), then pieces that
    contain the query, shortest first. A query that is a number ``#123`` or ``id:123`` is the id.
    """
    q = _normalise(query)
    if not q:
        return []
    V = len(pieces)
    raw = q.strip()
    for prefix in ("#", "id:"):
        if raw.lower().startswith(prefix) and raw[len(prefix):].strip().isdigit():
            i = int(raw[len(prefix):].strip())
            return [i] if 0 <= i < V else []
    norm, lower = _index(tuple(pieces))
    out: list[int] = []

    def add(ids) -> None:
        for i in ids:
            if 0 <= int(i) < V and int(i) not in out:
                out.append(int(i))

    add(i for i, p in enumerate(norm) if p == q)
    if not q.startswith(" "):
        add(i for i, p in enumerate(norm) if p == " " + q)
    if tokenizer is not None:
        try:
            add(tokenizer.encode(q))
        except Exception:  # a tokenizer that refuses the text: the substring search still answers
            pass
    if len(out) < limit:
        low = q.lower()
        contains = [i for i, p in enumerate(lower) if low in p and i not in out]
        contains.sort(key=lambda i: (len(norm[i]), i))
        add(contains[: limit - len(out)])
    return out[:limit]


def lookup_table(ids: Sequence[int], pieces: Sequence[str], dists: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per token of ``ids``: ``token`` (whitespace visible), ``id`` and, for every named
    distribution ``[V]`` in ``dists``, ``p (<name>)`` and ``rank (<name>)`` (1 = most likely)."""
    ids = [int(i) for i in ids]
    df = pd.DataFrame({"token": [visible(pieces[i]) for i in ids], "id": ids})
    for name, p in dists.items():
        p = np.asarray(p, dtype=np.float32).ravel()
        df[f"p ({name})"] = p[ids] if ids else np.zeros(0, dtype=np.float32)
        df[f"rank ({name})"] = ranks(p, ids) if ids else np.zeros(0, dtype=np.int64)
    return df


def lookup_by_distribution(ids: Sequence[int], pieces: Sequence[str], dists: Mapping[str, np.ndarray],
                           max_tokens: int = 5) -> pd.DataFrame:
    """The transpose of :func:`lookup_table` for many distributions (the logit lens: one per
    layer): one row per distribution, and for each of the first ``max_tokens`` of ``ids`` the
    columns ``p '<token>'`` and ``rank '<token>'``."""
    ids = [int(i) for i in ids][:max_tokens]
    df = pd.DataFrame({"": list(dists)})
    for i in ids:
        name = f"'{visible(pieces[i])}' #{i}"
        ps = [np.asarray(p, dtype=np.float32).ravel() for p in dists.values()]
        df[f"p {name}"] = np.array([p[i] for p in ps], dtype=np.float32)
        df[f"rank {name}"] = np.array([ranks(p, [i])[0] for p in ps], dtype=np.int64)
    return df
