"""Training data: the train/val split and seeded batches.

A batch is a pure function of ``(seed, stream, step)``: the trainer never keeps a random
state for its data, so a resumed run draws exactly the batches an uninterrupted run would
have drawn. ``stream`` separates independent sequences of batches (training, validation, and
one training stream per rank under DistributedDataParallel).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

VAL_FRACTION = 0.1  # the last 10% of the text is held out for validation

# Named streams; a rank's training stream is TRAIN_STREAM + rank.
TRAIN_STREAM = 0
VAL_STREAM = 1_000_000
SAMPLE_STREAM = 2_000_000


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed derived from ``(seed, stream, index)``; neighbours are unrelated."""
    h = hashlib.blake2b(f"{seed}:{stream}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass
class Split:
    """One split of the corpus: token ids and how many tokens a character costs."""

    name: str                # "train" or "val"
    ids: torch.Tensor        # [N] int64 token ids
    n_chars: int             # characters of text these ids encode

    @property
    def tokens_per_char(self) -> float:
        """1.0 for a character tokenizer, lower for BPE; converts nats/token to bits/char."""
        return len(self.ids) / max(1, self.n_chars)


def split_chars(text: str) -> tuple[str, str]:
    """The text cut where training ends and validation begins: ``(first 90%, last 10%)``.

    The one place that decides the cut: :func:`split_text` encodes these parts, and a tool that
    needs only the validation text (a quick val loss) takes the second without encoding the first.
    """
    cut = int(len(text) * (1 - VAL_FRACTION))
    return text[:cut], text[cut:]


def split_text(text: str, tokenizer, block_size: int) -> tuple[Split, Split]:
    """Encode ``text`` as a train split (first 90%) and a val split (last 10%).

    The text is cut at a character position before encoding, so both splits encode whole
    characters. Each split must hold at least ``block_size + 1`` tokens (one input window and
    its shifted targets).
    """
    if not isinstance(text, str) or not text:
        raise ValueError("the training text is empty; load a corpus first (e.g. builtin:python-docs)")
    parts = tuple(zip(("train", "val"), split_chars(text)))
    splits = []
    for name, part in parts:
        ids = torch.tensor(tokenizer.encode(part), dtype=torch.long)
        if len(ids) < block_size + 1:
            raise _too_short(name, len(text), len(ids), block_size)
        splits.append(Split(name, ids, len(part)))
    return splits[0], splits[1]


def _too_short(name: str, n_chars: int, n_tokens: int, block_size: int, about: str = "") -> ValueError:
    where = "first 90%" if name == "train" else "last 10%"
    return ValueError(
        f"the {name} split (the {where} of a {n_chars:,}-character text) has {about}{n_tokens} "
        f"tokens, fewer than block_size + 1 = {block_size + 1}; use a longer text or a "
        f"smaller block_size"
    )


def check_text_fits(text: str, block_size: int, tokens_per_char: float = 1.0) -> None:
    """Raise the ``ValueError`` :func:`split_text` would, without encoding: each split needs
    ``block_size + 1`` tokens, estimated as characters × ``tokens_per_char`` (exact for a
    character tokenizer). For a form that refuses a corpus when it is chosen, not at Start."""
    for name, part in zip(("train", "val"), split_chars(text)):
        n = int(len(part) * tokens_per_char)
        if n < block_size + 1:
            raise _too_short(name, len(text), n, block_size, about="" if tokens_per_char == 1.0 else "about ")


def get_batch(ids: torch.Tensor, batch_size: int, block_size: int, seed: int, stream: int,
              index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``([B, T], [B, T])`` at random offsets drawn from ``(seed, stream, index)``.

    Targets are the inputs shifted by one token: row b of ``y`` is what each position of row b
    of ``x`` should predict.
    """
    gen = torch.Generator().manual_seed(stream_seed(seed, stream, index))
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=gen)  # (B,)
    pos = starts[:, None] + torch.arange(block_size)                               # (B, T)
    return ids[pos], ids[pos + 1]
