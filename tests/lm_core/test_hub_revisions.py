"""Hub revisions as time travel: the fake hub of ``tests/fakehub.py`` on 127.0.0.1 serving a tiny
Pythia-like (GPT-NeoX) repo whose branches ``step0``, ``step1``, ``step8``, ``step1000`` (and
``main``, and ``v1-fix``, not a step) hold different weights, as EleutherAI publishes Pythia's
training checkpoints."""

from __future__ import annotations

import time

import pytest
import torch

import lm_core
from lm_core import checkpoints

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)
pytest.importorskip("huggingface_hub")
from fakehub import FakeHub, commit, go_offline, point_hub_at, serving, stop, tiny_pythia_revisions  # noqa: E402

REPO = "tiny-org/tiny-pythia"
STEPS = [0, 1, 8, 1000]


def _commit(rev: str) -> str:
    return commit(REPO, rev)


@pytest.fixture(scope="module")
def revisions(tmp_path_factory):
    """Files of each revision: the same architecture, different random weights per step."""
    return tiny_pythia_revisions(tmp_path_factory.mktemp("tiny-pythia"), STEPS)


@pytest.fixture
def hub(revisions, tmp_path, monkeypatch):
    revs = dict(revisions[0])
    revs["v1-fix"] = revs["main"]
    with serving(FakeHub({REPO: revs})) as server:
        point_hub_at(monkeypatch, tmp_path, server.url)
        yield server


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
    stop(hub)
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
    point_hub_at(monkeypatch, tmp_path, "http://127.0.0.1:9")
    go_offline(monkeypatch)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set, and the local cache holds none"):
        checkpoints.list_step_revisions(REPO)
