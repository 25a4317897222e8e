"""Tokenizers: a character-level one and a byte-level BPE one (Hugging Face `tokenizers`).

Both share one small API, so the trainer, the generator and the app never care which is in use::

    tok = CharTokenizer.train(text)                 # or BPETokenizer.train(text, vocab_size=512)
    ids = tok.encode("to be")                       # list[int]
    tok.decode(ids)                                 # "to be"
    tok.pieces(ids)                                 # ["t", "o", "␣", "b", "e"]: display strings
    tok.vocab_size                                  # int, the size of the embedding table
    tok.save("run/tokenizer.json"); load_tokenizer("run/tokenizer.json")

The file format is JSON with a ``"kind"`` field (``"char"`` or ``"bpe"``) and a ``"version"``;
a BPE file embeds the Hugging Face tokenizer's own JSON under ``"hf"``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .atomic import atomic_write_bytes

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "MIN_BPE_VOCAB_SIZE",
    "Tokenizer",
    "UNK_DECODED",
    "UNK_PIECE",
    "load_tokenizer",
    "tokenizer_from_json",
    "visible",
]

FORMAT_VERSION = 1

UNK_DECODED = "\ufffd"  # what decode() writes for the <unk> id: the Unicode replacement character
UNK_PIECE = "⟨unk⟩"  # what pieces() shows for the <unk> id

# Byte-level BPE starts from all 256 bytes; a vocabulary must hold them plus at least one merge.
MIN_BPE_VOCAB_SIZE = 257

# Marks that make whitespace visible in token displays.
_VISIBLE_MARKS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
_VISIBLE_TABLE = str.maketrans(_VISIBLE_MARKS)


def visible(text: str) -> str:
    """Return ``text`` with space, newline, tab and carriage return replaced by visible marks.

    ``" "`` → ``"␣"`` (U+2423), ``"\\n"`` → ``"↵"`` (U+21B5), ``"\\t"`` → ``"⇥"``,
    ``"\\r"`` → ``"␍"``.
    """
    return text.translate(_VISIBLE_TABLE)


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """``ids`` (ints, numpy or torch scalars) as a list of ints, each in ``[0, vocab_size)``."""
    out = [int(i) for i in ids]
    for i in out:
        if not 0 <= i < vocab_size:
            raise ValueError(
                f"Token id {i} is outside this tokenizer's vocabulary (ids 0..{vocab_size - 1}); "
                "was it produced by a different tokenizer?"
            )
    return out


class Tokenizer(ABC):
    """The interface both tokenizers implement (use it for type hints)."""

    kind: str  # "char" or "bpe", stored in the JSON file

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids: every id is in ``range(vocab_size)``."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; never fails on unexpected characters."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of the token ids; an id outside the vocabulary raises ``ValueError``."""

    @abstractmethod
    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One display string per id, with whitespace made visible (see :func:`visible`)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready description written by :meth:`save` (has ``"kind"`` and ``"version"``)."""

    def to_json(self) -> str:
        """The tokenizer as a JSON string; :func:`tokenizer_from_json` reads it back."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer to ``path`` as JSON, atomically (a crash leaves the old file)."""
        atomic_write_bytes(Path(path), self.to_json().encode("utf-8"))

    def tokens_per_char(self, text: str) -> float:
        """``len(encode(text)) / len(text)``: 1.0 for a char tokenizer, lower for BPE."""
        if not text:
            raise ValueError("tokens_per_char needs a non-empty text.")
        return len(self.encode(text)) / len(text)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable-looking value object, compared by content


class CharTokenizer(Tokenizer):
    """One token per character.

    Ids ``0..len(chars)-1`` are the training text's distinct characters in sorted (code point)
    order; the **last** id, ``unk_id == len(chars)``, is ``<unk>``. So a corpus with 65 distinct
    characters, like Tiny Shakespeare, gives ``vocab_size == 66``. Characters never seen in
    training encode to ``unk_id``; ``decode`` writes ``unk_id`` as ``"\\ufffd"`` and ``pieces``
    shows it as ``"⟨unk⟩"``.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(
                    f"CharTokenizer entries must be single characters, got {c!r}."
                )
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer characters must be distinct; got duplicates.")
        if not chars:
            raise ValueError("CharTokenizer needs at least one character.")
        self.chars: tuple[str, ...] = tuple(chars)
        self.unk_id: int = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from the distinct characters of ``text`` (plus ``<unk>``)."""
        if not text:
            raise ValueError("Cannot train a CharTokenizer on an empty text; load a corpus first.")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Distinct training characters + 1 (the ``<unk>`` id)."""
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """One id per character; unseen characters become ``unk_id``."""
        unk = self.unk_id
        get = self._stoi.get
        return [get(c, unk) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Join the characters of ``ids``; ``unk_id`` becomes ``"\\ufffd"``."""
        ids = _check_ids(ids, self.vocab_size)
        chars, unk = self.chars, self.unk_id
        return "".join(UNK_DECODED if i == unk else chars[i] for i in ids)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each id's character with whitespace made visible; ``unk_id`` shows as ``"⟨unk⟩"``."""
        ids = _check_ids(ids, self.vocab_size)
        return [UNK_PIECE if i == self.unk_id else visible(self.chars[i]) for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": FORMAT_VERSION, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != cls.kind or not isinstance(data.get("chars"), str):
            raise ValueError(
                "Not a char tokenizer description: expected kind 'char' and a 'chars' string."
            )
        return cls(list(data["chars"]))

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(_parse_json(text, "The given JSON text"))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte ↔ printable-character table, inverted: character → byte value.

    Byte-level BPE stores every byte as a printable character (space is "Ġ", newline "Ċ", …)
    so that tokens are plain strings; this undoes that mapping.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _bytes_to_display(data: bytes) -> str:
    """Decode UTF-8 where valid; bytes that do not form a whole character show as ``<0xE2>``."""
    out: list[str] = []
    while data:
        try:
            out.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(data[: e.start].decode("utf-8"))
            out.extend(f"<0x{b:02X}>" for b in data[e.start : e.end])
            data = data[e.end :]
    return "".join(out)


class BPETokenizer(Tokenizer):
    """Byte-level BPE on Hugging Face ``tokenizers``: any Unicode text round-trips exactly.

    Train one with :meth:`train`, wrap an existing ``tokenizers.Tokenizer`` with
    ``BPETokenizer(hf_tokenizer)``, or read a Hugging Face ``tokenizer.json`` (GPT-2's, say) with
    :meth:`from_hf_json`. ``hf`` is the wrapped Hugging Face object.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer: HFTokenizer) -> None:
        if not isinstance(hf_tokenizer, HFTokenizer):
            raise ValueError(
                f"BPETokenizer wraps a tokenizers.Tokenizer, got {type(hf_tokenizer).__name__}."
            )
        self.hf = hf_tokenizer
        # GPT-2 style tokenizers keep bytes as printable characters; others (e.g. SentencePiece
        # style) store text directly, and pieces() shows those tokens as they are.
        self._byte_level = isinstance(hf_tokenizer.decoder, decoders.ByteLevel)
        self._added = {i: t.content for i, t in hf_tokenizer.get_added_tokens_decoder().items()}
        self._piece_cache: dict[int, str] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int = 512) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges on ``text`` (fewer if the text runs out of pairs).

        Every byte is in the starting alphabet, so nothing is ever unknown. ``vocab_size`` must
        be at least :data:`MIN_BPE_VOCAB_SIZE` (257).
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"vocab_size must be an integer, got {vocab_size!r}.")
        if vocab_size < MIN_BPE_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: the 256 bytes come "
                f"first, so use at least {MIN_BPE_VOCAB_SIZE} (512 is a good start)."
            )
        if not text:
            raise ValueError("Cannot train a BPETokenizer on an empty text; load a corpus first.")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,  # it would draw on stderr; the library stays quiet
        )
        hf.train_from_iterator([text], trainer=trainer)
        return cls(hf)

    @classmethod
    def from_hf_json(cls, source: str | os.PathLike[str]) -> BPETokenizer:
        """Wrap a Hugging Face ``tokenizer.json``: a path to one, or its JSON text."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            try:
                return cls(HFTokenizer.from_str(source))
            except Exception as e:  # the Rust side raises a bare Exception
                raise ValueError(
                    f"The given text is not a Hugging Face tokenizer JSON: {e}."
                ) from e
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"Tokenizer file {str(path)!r} does not exist; check the path.")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:
            raise ValueError(
                f"Tokenizer file {str(path)!r} is not a Hugging Face tokenizer.json: {e}."
            ) from e

    @property
    def vocab_size(self) -> int:
        """Number of ids, added/special tokens included (GPT-2: 50257)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens kept; ``decode(encode(s)) == s`` for any string."""
        ids = _check_ids(ids, self.vocab_size)
        return self.hf.decode(ids, skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (an added token: its text in UTF-8)."""
        (token_id,) = _check_ids([token_id], self.vocab_size)
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        token = self.hf.id_to_token(token_id)
        if token is None:  # a hole in the vocabulary: nothing to show
            return b""
        if not self._byte_level:
            return token.replace("▁", " ").encode("utf-8")  # SentencePiece marks spaces with ▁
        table = _byte_level_decoder()
        # A character outside the table cannot come from byte-level BPE; keep it as text.
        return b"".join(
            bytes([table[c]]) if c in table else c.encode("utf-8") for c in token
        )

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token's text with whitespace made visible.

        Byte-level artefacts are undone ("Ġthe" shows as "␣the"); a token holding only part of a
        UTF-8 character shows its bytes as hex, e.g. ``"<0xE2>"``. Added tokens such as
        ``<|endoftext|>`` show as written.
        """
        ids = _check_ids(ids, self.vocab_size)
        out = []
        for i in ids:
            piece = self._piece_cache.get(i)
            if piece is None:
                if i in self._added:
                    piece = self._added[i]
                else:
                    piece = visible(_bytes_to_display(self.token_bytes(i)))
                self._piece_cache[i] = piece
            out.append(piece)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": FORMAT_VERSION, "hf": json.loads(self.hf.to_str())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != cls.kind or not isinstance(data.get("hf"), dict):
            raise ValueError(
                "Not a BPE tokenizer description: expected kind 'bpe' and an 'hf' object."
            )
        try:
            return cls(HFTokenizer.from_str(json.dumps(data["hf"])))
        except Exception as e:
            raise ValueError(f"The embedded Hugging Face tokenizer is invalid: {e}.") from e

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(_parse_json(text, "The given JSON text"))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


_KINDS: dict[str, type[CharTokenizer] | type[BPETokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    BPETokenizer.kind: BPETokenizer,
}


def _parse_json(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e}); it is not an LM Lens tokenizer.") from e
    if not isinstance(data, dict):
        raise ValueError(f"{where} holds JSON but not an object; it is not an LM Lens tokenizer.")
    return data


def _from_data(data: dict[str, Any], where: str) -> Tokenizer:
    kind = data.get("kind")
    if kind not in _KINDS:
        hint = ""
        if "model" in data and "pre_tokenizer" in data:
            hint = (
                " It looks like a Hugging Face tokenizer.json: load it with"
                " BPETokenizer.from_hf_json."
            )
        raise ValueError(
            f"{where} is not an LM Lens tokenizer: its 'kind' is {kind!r}, expected one of "
            f"{sorted(_KINDS)}.{hint}"
        )
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where} has tokenizer format version {version!r}; this LM Lens reads version "
            f"{FORMAT_VERSION}. Retrain the tokenizer or upgrade LM Lens."
        )
    try:
        return _KINDS[kind].from_dict(data)
    except ValueError as e:
        raise ValueError(f"{where} is a damaged tokenizer file: {e}") from e


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer of either kind from :meth:`Tokenizer.to_json` output."""
    return _from_data(_parse_json(text, "The given JSON text"), "The given JSON text")


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer written by :meth:`Tokenizer.save`; a bad file raises ``ValueError``."""
    path = Path(path)
    where = f"Tokenizer file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(
            f"{where} does not exist; check the path or train a tokenizer first."
        ) from None
    except IsADirectoryError:
        raise ValueError(
            f"{where} is a folder, not a file; point at the tokenizer.json inside."
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 JSON; it is not an LM Lens tokenizer.") from None
    except OSError as e:
        raise ValueError(f"{where} could not be read ({e.strerror}).") from None
    return _from_data(_parse_json(text, where), where)
