"""load_pretrained("<hub name>"): the download path, against the fake hub of ``tests/fakehub.py``
on 127.0.0.1 (no network): the routes it answers are listed there."""

from __future__ import annotations

import re
import time

import pytest
import torch

import lm_core
from lm_core.pretrained import load_pretrained
from lm_core.tokenizers import BPETokenizer

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)
hub_constants = pytest.importorskip("huggingface_hub.constants")
from fakehub import FakeHub, closed_port, commit, go_offline, point_hub_at, serving, stop, tiny_gpt2_repo  # noqa: E402

REPO = "tiny-org/tiny-gpt2"
COMMIT = commit(REPO, "main")


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """The files of a small random GPT-2 repo (safetensors + tokenizer.json), and its models."""
    return tiny_gpt2_repo(tmp_path_factory.mktemp("tiny-gpt2-repo"))


VOCAB_REPO = "tiny-org/tiny-gpt2-vocab-merges"


@pytest.fixture
def fake_hub(tiny_repo, tmp_path, monkeypatch):
    files, _, tok = tiny_repo
    # the same model with GPT-2's older tokenizer files instead of tokenizer.json
    (tmp_path / "vm").mkdir()
    tok.hf.model.save(str(tmp_path / "vm"))  # vocab.json + merges.txt
    older = {k: v for k, v in files.items() if k != "tokenizer.json"}
    older.update({f.name: f.read_bytes() for f in (tmp_path / "vm").iterdir()})
    assert {"vocab.json", "merges.txt"} <= set(older)
    with serving(FakeHub({REPO: {"main": files}, VOCAB_REPO: {"main": older}})) as server:
        point_hub_at(monkeypatch, tmp_path, server.url)
        yield server


def test_load_pretrained_from_the_fake_hub(fake_hub, tiny_repo):
    _, hf, hf_tok = tiny_repo
    model, tok = load_pretrained(REPO)

    assert isinstance(model, lm_core.GPT) and not model.training
    assert model.config.n_layer == 2 and model.config.n_embd == 32 and model.config.block_size == 64
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == hf_tok.vocab_size
    text = "the cat sat on the rat"
    assert tok.encode(text) == hf_tok.hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)

    # the files were fetched from the fake hub, at "main" or at the commit it resolves to
    fetched = {p.rsplit("/", 1)[1] for p in fake_hub.paths("GET")
               if re.fullmatch(rf"/{REPO}/resolve/(main|{COMMIT})/[\w.]+", p)}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched, fake_hub.log
    # an optional file the repo lacks was asked for, answered 404 EntryNotFound, and skipped
    assert any(p.endswith("/generation_config.json") for p in fake_hub.paths("HEAD")), fake_hub.log


def test_a_repo_with_vocab_and_merges_instead_of_tokenizer_json(fake_hub, tiny_repo):
    _, hf, hf_tok = tiny_repo
    model, tok = load_pretrained(VOCAB_REPO)
    text = "the cat sat on the rat"
    assert tok.vocab_size == hf_tok.vocab_size and tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == hf_tok.encode(text)
    assert any(p.endswith("/tokenizer.json") for p in fake_hub.paths("HEAD"))  # asked first, 404
    assert any(p.endswith("/merges.txt") for p in fake_hub.paths("GET")), fake_hub.log
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_unknown_repo_is_a_value_error_naming_it(fake_hub):
    with pytest.raises(ValueError, match="no-such-org/no-such-model") as e:
        load_pretrained("no-such-org/no-such-model")
    assert any(p.startswith("/no-such-org/no-such-model/") for p in fake_hub.paths()), fake_hub.log


def test_a_downloaded_model_loads_from_the_cache_with_the_hub_gone(fake_hub, tiny_repo):
    _, hf, _ = tiny_repo
    first, _ = load_pretrained(REPO)
    stop(fake_hub)  # the hub is gone: a refused connection from now on
    asked = len(fake_hub.log)
    t0 = time.perf_counter()
    model, tok = load_pretrained(REPO)
    elapsed = time.perf_counter() - t0
    assert len(fake_hub.log) == asked and elapsed < 5, (elapsed, fake_hub.log[asked:])
    ids = torch.tensor([tok.encode("the mat")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_hub_down_fails_fast_with_a_value_error(tmp_path, monkeypatch):
    """A hub that refuses connections (and no cache): a ValueError within seconds.

    Without lm_core's reachability check, huggingface_hub retries a refused HEAD with backoff
    sleeps of 1+2+4+8+8 s (about 23 s measured with huggingface_hub 2.4.0) before giving up.
    """
    port = closed_port()
    point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")  # also unsets any proxy
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(repr(REPO))) as e:
        load_pretrained(REPO)
    elapsed = time.perf_counter() - t0
    assert f"could not reach the Hugging Face hub at 127.0.0.1:{port}" in str(e.value)
    assert "local folder" in str(e.value)
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_offline_mode_without_a_cache_says_so(tmp_path, monkeypatch):
    point_hub_at(monkeypatch, tmp_path, "http://127.0.0.1:9")
    go_offline(monkeypatch)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        load_pretrained(REPO)
