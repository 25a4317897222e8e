"""Text in, token ids out: what every page does with a text box before it asks the model.

Every user-facing problem is raised as :class:`InputProblem` with a sentence that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import lm_core

from ..figures import token_labels


class InputProblem(ValueError):
    """Bad input from the user; the message says what to do. Shown as ``st.error``/``st.warning``."""


@dataclass
class Encoded:
    ids: list[int]
    pieces: list[str]
    labels: list[str]
    note: str = ""          # non-empty when something was cut or replaced: show as a warning


MAX_INSPECT_TOKENS = 256   # pages that keep every layer's attention: 12 × 12 heads × 256² is 38 MB


def inspect_limit(cfg: lm_core.ModelConfig) -> dict:
    """How many tokens the inspection pages read and why that many: ``encode_text`` keywords.

    The model's context, capped at :data:`MAX_INSPECT_TOKENS`: a GPT-2 (context 1024, 12 × 12
    heads) would otherwise keep 600 MB of attention patterns per text."""
    if cfg.block_size <= MAX_INSPECT_TOKENS:
        return {"block_size": cfg.block_size, "limit": "the model reads"}
    return {"block_size": MAX_INSPECT_TOKENS, "limit": f"this page shows (of the model's {cfg.block_size})"}


def encode_text(tokenizer, text: str, block_size: int, keep: str = "start",
                what: str = "text", limit: str = "the model reads") -> Encoded:
    """Encode ``text`` for a model with context ``block_size``.

    Empty or whitespace-only text raises :class:`InputProblem`. Longer text is cut to
    ``block_size`` tokens: ``keep="start"`` keeps the first tokens (inspection), ``"end"`` the
    last ones (a prompt); ``note`` says what was cut, and ``limit`` who reads only that many.
    """
    if text is None or not str(text).strip():
        raise InputProblem(f"The {what} is empty. Type or paste some text (at least one visible character).")
    ids = tokenizer.encode(text)
    if not ids:
        raise InputProblem(f"The {what} produced no tokens. Type some ordinary text.")
    note = ""
    if len(ids) > block_size:
        n = len(ids)
        if keep == "start":
            kept = ids[:block_size]
            cut_chars = len(text) - len(tokenizer.decode(kept))
            note = (f"The {what} is {n} tokens long but {limit} at most {block_size}: showing the "
                    f"first {block_size} tokens; the last {n - block_size} tokens (about {max(cut_chars, 0)} "
                    f"characters) were cut. Shorten the text to see all of it.")
        else:
            kept = ids[-block_size:]
            cut_chars = len(text) - len(tokenizer.decode(kept))
            note = (f"The {what} is {n} tokens long but {limit} at most {block_size}: it sees only "
                    f"the last {block_size} tokens; the first {n - block_size} tokens (about "
                    f"{max(cut_chars, 0)} characters) were cut.")
        ids = kept
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and unk in ids:
        n_unk = ids.count(unk)
        extra = (f"{n_unk} character(s) are not in this model's vocabulary and show as ⟨unk⟩; "
                 f"the model never saw them in training.")
        note = f"{note} {extra}".strip()
    pieces = tokenizer.pieces(ids)
    return Encoded(ids=ids, pieces=pieces, labels=token_labels(pieces), note=note)
