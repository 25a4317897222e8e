"""Tokenizers: round trips, <unk> handling, display pieces, save/load and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from lm_core.corpora import load_corpus
from lm_core.tokenizers import (
    MIN_BPE_VOCAB_SIZE,
    UNK_DECODED,
    UNK_PIECE,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    tokenizer_from_json,
    visible,
)

CHAR_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\tAll: Speak, speak.\n"
ALPHABET = sorted(set(CHAR_TEXT))


@pytest.fixture(scope="module")
def training_text() -> str:
    return load_corpus("builtin:python-docs")[:8000]


@pytest.fixture(scope="module")
def bpe(training_text: str) -> BPETokenizer:
    return BPETokenizer.train(training_text, vocab_size=320)


@pytest.fixture(scope="module")
def char() -> CharTokenizer:
    return CharTokenizer.train(CHAR_TEXT)


# ----------------------------------------------------------------------------- char


def test_char_round_trip_and_vocab(char: CharTokenizer) -> None:
    assert char.kind == "char"
    assert char.decode(char.encode(CHAR_TEXT)) == CHAR_TEXT
    assert char.vocab_size == len(ALPHABET) + 1
    assert list(char.chars) == ALPHABET  # sorted by code point
    assert char.unk_id == char.vocab_size - 1  # <unk> is the last id
    assert char.tokens_per_char(CHAR_TEXT) == 1.0


def test_char_vocab_is_distinct_chars_plus_one() -> None:
    text = "".join(chr(33 + i) for i in range(65)) * 3  # 65 distinct, like Tiny Shakespeare
    assert CharTokenizer.train(text).vocab_size == 66


def test_char_unknown_characters_become_unk(char: CharTokenizer) -> None:
    ids = char.encode("Fé🎉")
    assert ids == [char.encode("F")[0], char.unk_id, char.unk_id]
    assert char.decode(ids) == "F" + UNK_DECODED * 2
    assert char.pieces(ids) == ["F", UNK_PIECE, UNK_PIECE]


def test_char_pieces_mark_whitespace(char: CharTokenizer) -> None:
    assert char.pieces(char.encode("a e\n\t")) == ["a", "␣", "e", "↵", "⇥"]


@given(st.text(alphabet=ALPHABET))
def test_char_round_trip_property(text: str) -> None:
    tok = CharTokenizer.train(CHAR_TEXT)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


@given(st.text())
def test_char_never_crashes_on_any_text(text: str) -> None:
    tok = CharTokenizer.train(CHAR_TEXT)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert len(tok.pieces(ids)) == len(ids)
    assert len(tok.decode(ids)) == len(text)


@pytest.mark.parametrize("bad", [[-1], [10_000], [0, 999]])
def test_decode_rejects_ids_outside_vocab(char: CharTokenizer, bpe: BPETokenizer, bad) -> None:
    for tok in (char, bpe):
        with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
            tok.decode(bad)
        with pytest.raises(ValueError, match="outside"):
            tok.pieces(bad)


def test_char_rejects_empty_training_text() -> None:
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train("")


# ----------------------------------------------------------------------------- BPE


def test_bpe_basics(bpe: BPETokenizer, training_text: str) -> None:
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 320
    ids = bpe.encode(training_text[:500])
    assert bpe.decode(ids) == training_text[:500]
    assert bpe.tokens_per_char(training_text) < 0.8  # merges actually compress
    assert bpe.encode("") == []


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    # Tokens are a segmentation of the UTF-8 bytes.
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")
    pieces = bpe.pieces(ids)
    assert len(pieces) == len(ids)
    assert all(p and not any(c in p for c in " \n\t\r") for p in pieces)


@pytest.mark.parametrize(
    "text", ["", " leading space", "trailing\n\n", "a\r\nb", "e\u0301 combining", "日本語 🎉 ok"]
)
def test_bpe_round_trip_examples(bpe: BPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_pieces_undo_byte_level_artefacts(bpe: BPETokenizer) -> None:
    text = "def the function(x):\n\treturn x  # done"
    pieces = bpe.pieces(bpe.encode(text))
    joined = "".join(pieces)
    assert not any(c in joined for c in "ĠĊĉ")
    assert joined == visible(text)
    assert "␣" in joined and "↵" in joined and "⇥" in joined


def test_bpe_pieces_show_partial_utf8_as_hex(bpe: BPETokenizer) -> None:
    ids = bpe.encode("🎉")  # never seen in training: one token per byte
    assert bpe.pieces(ids) == ["<0xF0>", "<0x9F>", "<0x8E>", "<0x89>"]


def test_bpe_is_deterministic(training_text: str, bpe: BPETokenizer) -> None:
    assert BPETokenizer.train(training_text, vocab_size=320) == bpe


@pytest.mark.parametrize("size", [0, -5, 100, 256, MIN_BPE_VOCAB_SIZE - 1, 3.5, "512", True])
def test_bpe_rejects_bad_vocab_sizes(training_text: str, size) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(training_text, vocab_size=size)


def test_bpe_smallest_vocab_and_empty_text() -> None:
    assert BPETokenizer.train("abab abab", vocab_size=MIN_BPE_VOCAB_SIZE).vocab_size <= 257
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train("", vocab_size=512)


def test_bpe_wraps_hf_tokenizer_with_special_tokens(bpe: BPETokenizer, tmp_path: Path) -> None:
    hf = HFTokenizer.from_str(bpe.hf.to_str())
    hf.add_special_tokens(["<|endoftext|>"])
    tok = BPETokenizer(hf)
    eot = tok.vocab_size - 1
    ids = tok.encode("hi<|endoftext|>")
    assert ids[-1] == eot
    assert tok.decode(ids) == "hi<|endoftext|>"  # special tokens are not skipped
    assert tok.pieces([eot]) == ["<|endoftext|>"]

    path = tmp_path / "hf_tokenizer.json"
    path.write_text(hf.to_str(), encoding="utf-8")
    assert BPETokenizer.from_hf_json(path).encode("a b") == tok.encode("a b")
    assert BPETokenizer.from_hf_json(str(path)) == tok
    assert BPETokenizer.from_hf_json(hf.to_str()) == tok


def test_bpe_rejects_non_hf_objects_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizers.Tokenizer"):
        BPETokenizer("not a tokenizer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        BPETokenizer.from_hf_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        BPETokenizer.from_hf_json(bad)
    with pytest.raises(ValueError, match="not a Hugging Face"):
        BPETokenizer.from_hf_json('{"hello": 1}')


# ----------------------------------------------------------------------------- save / load


def test_save_load_both_kinds(char: CharTokenizer, bpe: BPETokenizer, tmp_path: Path) -> None:
    sample = "Speak, speak! é 🎉\n\tdef f(): pass"
    for tok in (char, bpe):
        path = tmp_path / f"{tok.kind}.json"
        tok.save(path)
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tok)
        assert loaded == tok
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(sample) == tok.encode(sample)
        assert loaded.decode(tok.encode(sample)) == tok.decode(tok.encode(sample))
        assert loaded.pieces(tok.encode(sample)) == tok.pieces(tok.encode(sample))
        assert json.loads(path.read_text(encoding="utf-8"))["kind"] == tok.kind
        assert tokenizer_from_json(tok.to_json()) == tok
        assert type(tok).from_json(tok.to_json()) == tok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe.json", "char.json"]  # no temp files


def test_save_overwrites_atomically(char: CharTokenizer, bpe: BPETokenizer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokenizer.json"
    char.save(path)
    bpe.save(path)
    assert load_tokenizer(path) == bpe
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]


def test_char_and_bpe_are_not_equal(char: CharTokenizer, bpe: BPETokenizer) -> None:
    assert char != bpe
    assert char == CharTokenizer.train(CHAR_TEXT)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("this is not json", "not valid JSON"),
        ("[1, 2, 3]", "not an object"),
        ('{"foo": 1}', "not an LM Lens tokenizer"),
        ('{"kind": "wordpiece", "version": 1}', "'kind' is 'wordpiece'"),
        ('{"kind": "char", "version": 99, "chars": "ab"}', "version 99"),
        ('{"kind": "char", "version": 1, "chars": 5}', "damaged"),
        ('{"kind": "char", "version": 1, "chars": "aa"}', "distinct"),
        ('{"kind": "bpe", "version": 1, "hf": {"nonsense": true}}', "damaged"),
    ],
)
def test_load_tokenizer_rejects_bad_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "weird.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        load_tokenizer(path)
    assert "weird.json" in str(info.value)


def test_load_tokenizer_missing_binary_folder_and_hf_file(
    bpe: BPETokenizer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"missing\.json.*does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="binary.json"):
        load_tokenizer(binary)
    with pytest.raises(ValueError, match="folder"):
        load_tokenizer(tmp_path)
    hf_file = tmp_path / "tokenizer.json"
    hf_file.write_text(bpe.hf.to_str(), encoding="utf-8")
    with pytest.raises(ValueError, match="from_hf_json"):
        load_tokenizer(hf_file)
