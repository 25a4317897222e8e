"""A fake Hugging Face hub on 127.0.0.1 for tests (no network), shared by lm_core and app tests.

A ``ThreadingHTTPServer`` answers the routes a download takes (transformers' ``from_pretrained``
through ``huggingface_hub``, ``HfApi.model_info`` / ``list_repo_refs``, ``hf_hub_download``):

* ``GET /api/models/{repo}[/revision/{rev}]``: the repo's info at a revision (a branch or a
  commit), whose ``sha`` pins the commit, with each file's ``size``;
* ``GET /api/models/{repo}/refs``: its branches (Pythia's ``step0`` … are branches);
* ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}`` with the headers the hub sends
  (``X-Repo-Commit``, ``ETag``, ``Content-Length``);
* 404 + ``X-Error-Code: EntryNotFound`` for a file the repo lacks (``generation_config.json``,
  optional), ``RepoNotFound`` for a repo it does not hold, ``RevisionNotFound`` for an unknown
  branch, and a plain 404 for anything else (``/api/agent-harnesses``, telemetry).

``FakeHub(xet=True)`` marks every file as kept in Xet storage (the ``X-Xet-Hash`` and
``X-Xet-Refresh-Route`` headers the hub sends for such files), with no Xet service behind it: a
client that tries Xet's transfer engine fails, one on plain HTTP gets the file.

``FakeHub.hold`` (an ``Event``, set by default) lets a test stop a download half-way: while it
is cleared, a file body is sent up to its first ``HOLD_BYTES`` and then waits. :func:`point_hub_at`
sets ``HF_ENDPOINT`` and a fresh cache, and patches what huggingface_hub and transformers read
from the environment at import time, so tests do not depend on import order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import torch

from support import scramble

TEXT = "the cat sat on the mat, the cat ate the rat. " * 20
HOLD_BYTES = 1024


def commit(repo: str, rev: str) -> str:
    """The commit a fake branch points to (40 hex characters, like git)."""
    return hashlib.sha1(f"{repo}@{rev}".encode()).hexdigest()


class FakeHub(ThreadingHTTPServer):
    """``repos``: repo -> {branch: {filename: bytes}} (a repo without revisions: {"main": files})."""

    daemon_threads = True

    def __init__(self, repos: dict[str, dict[str, dict[str, bytes]]], xet: bool = False):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos
        self.xet = xet
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self.lock = threading.Lock()
        self.hold = threading.Event()
        self.hold.set()
        self.holding = threading.Event()    # set while a body waits on ``hold``

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [p for m, p in self.log if method is None or m == method]

    def revision(self, repo: str, rev: str) -> str | None:
        """The branch a branch name or commit names, or None."""
        revs = self.repos.get(repo, {})
        if rev in revs:
            return rev
        return next((r for r in revs if commit(repo, r) == rev), None)


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, format, *args):  # quiet: the server keeps its own log
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool, hold: bool = False) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        if not body:
            return
        try:
            if hold and not self.server.hold.is_set():
                self.wfile.write(data[:HOLD_BYTES])
                self.wfile.flush()
                self.server.holding.set()
                self.server.hold.wait(timeout=60)
                self.server.holding.clear()
                data = data[HOLD_BYTES:]
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a cancelled download)
            pass

    def _json(self, status: int, obj, body: bool, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode(), body)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        srv = self.server
        with srv.lock:
            srv.log.append((self.command, path))
        parts = path.strip("/").split("/")
        api = parts[0] == "api"
        if api:
            if parts[1:2] != ["models"]:
                self._send(404, {}, b"not a route of the fake hub", body)
                return
            parts = parts[2:]
        repo = "/".join(parts[:2])
        revs = srv.repos.get(repo)
        if revs is None:
            self._json(404, {"error": "Repository not found"}, body,
                       {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return
        if api:
            rest = parts[2:]
            if rest == ["refs"]:
                branches = [{"name": r, "ref": f"refs/heads/{r}", "targetCommit": commit(repo, r)} for r in revs]
                self._json(200, {"branches": branches, "tags": [], "converts": []}, body)
                return
            rev = srv.revision(repo, rest[1]) if rest[:1] == ["revision"] and len(rest) > 1 else "main"
            if rev is None or (rest and rest[0] != "revision"):
                self._json(404, {"error": "Invalid rev id"}, body, {"X-Error-Code": "RevisionNotFound"})
                return
            files = revs[rev]
            info = {"id": repo, "modelId": repo, "sha": commit(repo, rev), "private": False,
                    "siblings": [{"rfilename": f, "size": len(files[f])} for f in sorted(files)]}
            self._json(200, info, body)
            return
        if len(parts) < 5 or parts[2] != "resolve":
            self._send(404, {}, b"not a route of the fake hub", body)
            return
        rev = srv.revision(repo, parts[3])
        if rev is None:
            self._json(404, {"error": "Invalid rev id"}, body,
                       {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
            return
        files, filename = revs[rev], "/".join(parts[4:])
        if filename not in files:
            self._json(404, {"error": "Entry not found"}, body,
                       {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                        "X-Repo-Commit": commit(repo, rev)})
            return
        data = files[filename]
        sha = hashlib.sha256(data).hexdigest()
        xet = {"X-Xet-Hash": sha, "X-Xet-Refresh-Route": f"/api/models/{repo}/xet-read-token/{rev}"} if srv.xet else {}
        self._send(200, {"X-Repo-Commit": commit(repo, rev), "ETag": f'"{sha}"',
                         "Content-Type": "application/octet-stream", **xet}, data, body, hold=len(data) > HOLD_BYTES)


@contextlib.contextmanager
def serving(hub: FakeHub) -> Iterator[FakeHub]:
    """Run ``hub`` in a thread for the ``with`` block; shut down after (safe if already shut)."""
    thread = threading.Thread(target=hub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.hold.set()
        hub.shutdown()
        hub.server_close()
        thread.join(timeout=5)


def stop(hub: FakeHub) -> None:
    """The hub goes away: a refused connection from now on."""
    hub.hold.set()
    hub.shutdown()
    hub.server_close()


def point_hub_at(monkeypatch, tmp_path: Path, endpoint: str) -> None:
    """HF_ENDPOINT -> ``endpoint``, a fresh cache, no token, online: in the environment and in
    the constants huggingface_hub already read from it."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_OIDC_RESOURCE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(hub_constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"), raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    try:  # transformers keeps one HfApi, whose endpoint is fixed when it is made: make a fresh one
        import transformers.utils.hub as transformers_hub

        monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)
    except ImportError:
        pass


def go_offline(monkeypatch) -> None:
    """``HF_HUB_OFFLINE``, as huggingface_hub read it."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- repos -------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    # transformers asks for it but does without: its absence exercises the EntryNotFound answer
    files.pop("generation_config.json", None)
    return files


def tiny_gpt2_repo(folder: Path, seed: int = 5):
    """The files of a small random GPT-2 repo (safetensors + tokenizer.json), its transformers
    model and tokenizer: ``(files, hf_model, tokenizer)``."""
    import transformers

    from lm_core.tokenizers import BPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    tok.hf.save(str(folder / "tokenizer.json"))
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(bos_token_id=0, eos_token_id=0, attn_implementation="eager", n_layer=2,
                                  n_head=2, n_embd=32, n_positions=64, vocab_size=tok.vocab_size)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    hf.save_pretrained(str(folder), safe_serialization=True)
    files = _files(folder)
    assert "model.safetensors" in files and "config.json" in files
    return files, hf, tok


def tiny_pythia_revisions(folder: Path, steps=(0, 1, 8, 1000)):
    """A tiny Pythia-like (GPT-NeoX) repo whose branches ``step<N>`` hold different weights, and
    ``main`` = the last: ``(revisions {branch: files}, models {branch: hf model}, tokenizer)``."""
    import transformers

    from lm_core.tokenizers import BPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    tok.hf.save(str(folder / "tokenizer.json"))
    tok_bytes = (folder / "tokenizer.json").read_bytes()
    out, models = {}, {}
    for s in steps:
        torch.manual_seed(s)
        cfg = transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.25,
                                         tie_word_embeddings=False, vocab_size=tok.vocab_size)
        hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        scramble(hf)
        d = folder / f"step{s}"
        hf.save_pretrained(str(d), safe_serialization=True)
        files = _files(d)
        files["tokenizer.json"] = tok_bytes
        out[f"step{s}"], models[f"step{s}"] = files, hf
    last = f"step{steps[-1]}"
    out["main"], models["main"] = out[last], models[last]
    return out, models, tok

