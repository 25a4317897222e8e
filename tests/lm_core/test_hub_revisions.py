"""Hub revisions as time travel: a fake hub on 127.0.0.1 serving a tiny Pythia-like (GPT-NeoX)
repo whose branches ``step0``, ``step1``, ``step8``, ``step1000`` (and ``main``) hold different
weights, as EleutherAI publishes Pythia's training checkpoints.

Extends test_pretrained_hub's fake hub with the routes revisions need:
``GET /api/models/{repo}/refs`` (the branches, for ``list_repo_refs``), and per-revision
``/api/models/{repo}/revision/{rev}`` and ``/{repo}/resolve/{rev}/{file}`` answering with that
revision's commit (a branch name or the commit itself)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from urllib.parse import unquote, urlsplit

import pytest
import torch

import lm_core
from lm_core import checkpoints
from lm_core.tokenizers import BPETokenizer

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)
pytest.importorskip("huggingface_hub")
from test_families import hf_model  # noqa: E402
from test_pretrained_hub import TEXT, FakeHub, _Handler, _point_hub_at  # noqa: E402

REPO = "tiny-org/tiny-pythia"
STEPS = [0, 1, 8, 1000]


def _commit(rev: str) -> str:
    return hashlib.sha1(f"{REPO}@{rev}".encode()).hexdigest()


class RevisionHub(FakeHub):
    """``revisions``: branch name -> {filename: bytes}."""

    def __init__(self, revisions: dict[str, dict[str, bytes]]):
        super().__init__({})
        self.RequestHandlerClass = _RevisionHandler
        self.revisions = revisions
        self.by_commit = {_commit(r): r for r in revisions}


class _RevisionHandler(_Handler):
    server: RevisionHub

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.server.lock:
            self.server.log.append((self.command, path))
        srv = self.server
        m = re.fullmatch(rf"/api/models/{REPO}/refs", path)
        if m:
            branches = [{"name": r, "ref": f"refs/heads/{r}", "targetCommit": _commit(r)} for r in srv.revisions]
            branches.append({"name": "v1-fix", "ref": "refs/heads/v1-fix", "targetCommit": _commit("main")})
            data = json.dumps({"branches": branches, "tags": [], "converts": []}).encode()
            self._send(200, {"Content-Type": "application/json"}, data, body)
            return
        m = re.fullmatch(rf"/api/models/{REPO}(?:/revision/([^/]+))?", path)
        if m:
            rev = srv.by_commit.get(m.group(1), m.group(1) or "main")
            if rev not in srv.revisions:
                self._send(404, {"X-Error-Code": "RevisionNotFound"}, b'{"error": "Invalid rev id"}', body)
                return
            info = {"id": REPO, "modelId": REPO, "sha": _commit(rev), "private": False,
                    "siblings": [{"rfilename": f} for f in sorted(srv.revisions[rev])]}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)
            return
        m = re.fullmatch(rf"/{REPO}/resolve/([^/]+)/(.+)", path)
        if not m:
            msg = json.dumps({"error": "Repository not found"}).encode()
            self._send(404, {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, msg, body)
            return
        rev = srv.by_commit.get(m.group(1), m.group(1))
        if rev not in srv.revisions:
            self._send(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
                       b'{"error": "Invalid rev id"}', body)
            return
        files, filename = srv.revisions[rev], m.group(2)
        if filename not in files:
            self._send(404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                             "X-Repo-Commit": _commit(rev)}, b'{"error": "Entry not found"}', body)
            return
        data = files[filename]
        self._send(200, {"X-Repo-Commit": _commit(rev), "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                         "Content-Type": "application/octet-stream"}, data, body)


@pytest.fixture(scope="module")
def revisions(tmp_path_factory):
    """Files of each revision: the same architecture, different random weights per step."""
    folder = tmp_path_factory.mktemp("tiny-pythia")
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    tok.hf.save(str(folder / "tokenizer.json"))
    tok_bytes = (folder / "tokenizer.json").read_bytes()
    out, models = {}, {}
    for s in STEPS:
        hf = hf_model("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64,
                                            rotary_pct=0.25, tie_word_embeddings=False,
                                            vocab_size=tok.vocab_size), seed=s)
        d = folder / f"step{s}"
        hf.save_pretrained(str(d), safe_serialization=True)
        files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
        files.pop("generation_config.json", None)
        files["tokenizer.json"] = tok_bytes
        out[f"step{s}"], models[f"step{s}"] = files, hf
    out["main"], models["main"] = out["step1000"], models["step1000"]
    return out, models, tok


@pytest.fixture
def hub(revisions, tmp_path, monkeypatch):
    server = RevisionHub(revisions[0])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, tmp_path, server.url)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _logits(model, tok):
    ids = torch.tensor([tok.encode("the cat sat on the mat")])
    with torch.no_grad():
        return model(ids), ids


def test_lists_step_revisions_in_step_order(hub):
    revs = checkpoints.list_step_revisions(REPO)
    assert [r.name for r in revs] == [f"step{s}" for s in STEPS]  # main and v1-fix are not steps
    assert [r.step for r in revs] == STEPS and revs[2].commit == _commit("step8")
    assert any(p == f"/api/models/{REPO}/refs" for p in hub.paths("GET")), hub.log


def test_each_revision_loads_its_own_weights(hub, revisions):
    _, models, _ = revisions
    for rev in ("step0", "step8"):
        model, tok = checkpoints.load_revision(REPO, rev)
        assert model.config.parallel_residual and model.config.rotary_pct == 0.25
        logits, ids = _logits(model, tok)
        with torch.no_grad():
            torch.testing.assert_close(logits, models[rev](ids).logits, atol=1e-4, rtol=1e-4)
    a, _ = lm_core.load_pretrained(REPO, revision="step0")
    b, _ = lm_core.load_pretrained(REPO)  # main = step1000
    assert not torch.equal(a.wte.weight, b.wte.weight)
    assert any(f"/resolve/step8/" in p or f"/resolve/{_commit('step8')}/" in p for p in hub.paths("GET"))


def test_unknown_revision_is_a_value_error_naming_it(hub):
    with pytest.raises(ValueError, match="revision 'step999'"):
        lm_core.load_pretrained(REPO, revision="step999")


def test_scores_across_revisions_then_offline_from_the_cache(hub, revisions):
    revs = checkpoints.list_step_revisions(REPO)
    chosen = [revs[0], revs[-1]]
    results = list(checkpoints.head_scores_over_revisions(REPO, chosen, seq_len=8, batch=2))
    assert [r.step for r in results] == [0, 1000]
    for r in results:
        model, _ = checkpoints.load_revision(REPO, r.revision)
        expected = lm_core.analysis.probe_head_scores(model, seq_len=8, batch=2)
        assert set(r.scores) == set(expected)
        for k in expected:
            assert r.scores[k].shape == (2, 4)
            torch.testing.assert_close(r.scores[k], expected[k])
    assert not torch.equal(results[0].scores["entropy"], results[1].scores["entropy"])
    df = checkpoints.revision_scores_frame(results)
    assert len(df) == 2 * 2 * 4 and {"revision", "step", "layer", "head", "induction"} <= set(df.columns)

    # the hub goes away: the cached revisions still list and load, fast, without a request
    hub.shutdown()
    hub.server_close()
    asked = len(hub.log)
    t0 = time.perf_counter()
    cached = checkpoints.list_step_revisions(REPO)
    assert [r.name for r in cached] == ["step0", "step1000"]
    model, tok = checkpoints.load_revision(REPO, "step1000")
    assert time.perf_counter() - t0 < 5 and len(hub.log) == asked
    logits, ids = _logits(model, tok)
    with torch.no_grad():
        torch.testing.assert_close(logits, revisions[1]["step1000"](ids).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="step8.*HF_HUB_OFFLINE|could not reach"):
        checkpoints.load_revision(REPO, "step8")  # never downloaded


def test_no_hub_and_no_cache_says_so(tmp_path, monkeypatch):
    from test_pretrained_hub import hub_constants

    _point_hub_at(monkeypatch, tmp_path, "http://127.0.0.1:9")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set, and the local cache holds none"):
        checkpoints.list_step_revisions(REPO)
