"""load_pretrained("<hub name>"): the download path, against a fake hub on 127.0.0.1 (no network).

A ``ThreadingHTTPServer`` answers the routes the download takes (transformers' ``from_pretrained``
through ``huggingface_hub``, and the Rust ``tokenizers.Tokenizer.from_pretrained``):

* ``GET /api/models/{repo}/revision/{rev}``: the repo's info, whose ``sha`` pins the commit;
* ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}`` with the headers the hub sends
  (``X-Repo-Commit``, ``ETag``, ``Content-Length``);
* 404 + ``X-Error-Code: EntryNotFound`` for a file the repo lacks (``generation_config.json``,
  optional), 404 + ``X-Error-Code: RepoNotFound`` for a repo it does not hold, and a plain 404
  for anything else (``/api/agent-harnesses``, huggingface_hub's telemetry).

``HF_ENDPOINT`` points at it; the constants huggingface_hub derived from the environment at import
time, and transformers' shared ``HfApi``, are patched too, so the test does not depend on import
order."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

import lm_core
from lm_core.pretrained import load_pretrained
from lm_core.tokenizers import BPETokenizer

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)
hub_constants = pytest.importorskip("huggingface_hub.constants")
from test_pretrained import _hf_model  # noqa: E402  (a random GPT-2 with every parameter far from its init)
transformers_hub = pytest.importorskip("transformers.utils.hub")

REPO = "tiny-org/tiny-gpt2"
COMMIT = hashlib.sha1(b"tiny-gpt2 commit").hexdigest()  # 40 hex chars, like a git commit
TEXT = "the cat sat on the mat, the cat ate the rat. " * 20


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [p for m, p in self.log if method is None or m == method]


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, format, *args):  # quiet: the server keeps its own log
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.server.lock:
            self.server.log.append((self.command, path))
        parts = path.strip("/").split("/")
        api = parts[0] == "api"
        if api:
            if parts[1:2] != ["models"]:  # e.g. /api/agent-harnesses, huggingface_hub's telemetry
                self._send(404, {}, b"not a route of the fake hub", body)
                return
            parts = parts[2:]
        repo = "/".join(parts[:2])
        files = self.server.repos.get(repo)
        if files is None:
            msg = json.dumps({"error": "Repository not found"}).encode()
            self._send(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found",
                             "Content-Type": "application/json"}, msg, body)
            return
        if api:  # /api/models/{repo}[/revision/{rev}]: the repo's info
            info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                    "siblings": [{"rfilename": f} for f in sorted(files)]}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)
            return
        if len(parts) < 5 or parts[2] != "resolve":
            self._send(404, {}, b"not a route of the fake hub", body)
            return
        filename = "/".join(parts[4:])
        if filename not in files:
            msg = json.dumps({"error": "Entry not found"}).encode()
            self._send(404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                             "X-Repo-Commit": COMMIT, "Content-Type": "application/json"}, msg, body)
            return
        data = files[filename]
        self._send(200, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                         "Content-Type": "application/octet-stream"}, data, body)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """The files of a small random GPT-2 repo (safetensors + tokenizer.json), and its models."""
    folder = tmp_path_factory.mktemp("tiny-gpt2-repo")
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    tok.hf.save(str(folder / "tokenizer.json"))
    hf = _hf_model(5, n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=tok.vocab_size)
    hf.save_pretrained(str(folder), safe_serialization=True)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert "model.safetensors" in files and "config.json" in files
    # transformers asks for it but does without: its absence exercises the EntryNotFound answer
    files.pop("generation_config.json", None)
    return files, hf, tok


def _point_hub_at(monkeypatch, tmp_path: Path, endpoint: str) -> None:
    """HF_ENDPOINT -> ``endpoint``, a fresh cache, no token, online: in the environment and in
    the constants huggingface_hub already read from it."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_OIDC_RESOURCE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(hub_constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    # transformers keeps one HfApi, whose endpoint is fixed when it is made: make a fresh one
    monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)


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
    server = FakeHub({REPO: files, VOCAB_REPO: older})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, tmp_path, server.url)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


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
    fake_hub.shutdown()
    fake_hub.server_close()  # the hub is gone: a refused connection from now on
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
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(repr(REPO))) as e:
        load_pretrained(REPO)
    elapsed = time.perf_counter() - t0
    assert f"could not reach the Hugging Face hub at 127.0.0.1:{port}" in str(e.value)
    assert "local folder" in str(e.value)
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_offline_mode_without_a_cache_says_so(tmp_path, monkeypatch):
    _point_hub_at(monkeypatch, tmp_path, "http://127.0.0.1:9")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        load_pretrained(REPO)
