"""app/core/hubjobs.py and app/core/picker.py without Streamlit: background downloads shared by
sessions, each session's Cancel, checkpoint sweeps whose scores are cached by (model, revision),
and the picker's facts and card; against the fake hub of ``tests/fakehub.py`` (no network)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from lm_core import catalog

pytest.importorskip("transformers", reason="transformers is not installed (optional extra)")
from fakehub import FakeHub, point_hub_at, serving, tiny_gpt2_repo, tiny_pythia_revisions  # noqa: E402

from app.core import hubjobs, picker  # noqa: E402
from app.core.hubjobs import CANCELLED, DONE, FAILED, HubJobs  # noqa: E402

REPO = "tiny-org/tiny-gpt2"
PYTHIA = "tiny-org/tiny-pythia"


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    files, _, _ = tiny_gpt2_repo(tmp_path_factory.mktemp("jobs-gpt2"))
    revs, _, _ = tiny_pythia_revisions(tmp_path_factory.mktemp("jobs-pythia"), (0, 8, 1000))
    return {REPO: {"main": files}, PYTHIA: revs}


@pytest.fixture
def hub(repos, tmp_path, monkeypatch):
    with serving(FakeHub(repos)) as server:
        point_hub_at(monkeypatch, tmp_path, server.url)
        yield server


@pytest.fixture
def jobs():
    reg = HubJobs()
    yield reg
    reg.stop_all()


def _wait(job, timeout=60):
    job.join(timeout)
    assert job.status != "running"
    return job.view()


def test_a_download_runs_in_the_background_and_reports_its_progress(hub, jobs):
    hub.hold.clear()
    job = jobs.download(REPO, None, "tab-a")
    assert hub.holding.wait(30)
    v = job.view()
    assert v.status == "running" and "model.safetensors" in v.stage and v.total_bytes > 0
    assert 0 < v.fraction < 1
    hub.hold.set()
    v = _wait(job)
    assert v.status == DONE and v.fraction == 1.0 and v.done_bytes == v.total_bytes
    from lm_core import hub as lm_hub

    assert picker.cached(REPO) and job.result == lm_hub.cached_snapshot(REPO)


def test_two_sessions_share_a_download_and_only_the_last_cancel_stops_it(hub, jobs):
    hub.hold.clear()
    a = jobs.download(REPO, None, "tab-a")
    b = jobs.download(REPO, None, "tab-b")
    assert a is b and a.members == {"tab-a", "tab-b"}
    assert hub.holding.wait(30)
    jobs.leave(a.key, "tab-a")  # one tab cancels: the other still waits, the download goes on
    assert not a.cancel.is_set() and a.status == "running"
    jobs.leave(a.key, "tab-b")
    assert a.cancel.is_set()
    hub.hold.set()
    assert _wait(a).status == CANCELLED
    assert not picker.cached(REPO)
    c = jobs.download(REPO, None, "tab-a")  # asked again: a fresh download, which completes
    assert c is not a and _wait(c).status == DONE and picker.cached(REPO)


def test_a_failed_download_says_why(hub, jobs):
    v = _wait(jobs.download("no-such/model", None, "tab-a"))
    assert v.status == FAILED and "no-such/model" in v.error


def test_a_sweep_scores_each_checkpoint_once(hub, jobs):
    revs = ["step0", "step8", "step1000"]
    job = jobs.sweep(PYTHIA, revs[:2], "tab-a")
    v = _wait(job, 120)
    assert v.status == DONE and v.items_done == 2 and v.fraction == 1.0
    s0 = jobs.scores.get(PYTHIA, "step0")
    assert s0["induction"].shape == (2, 4) and s0["induction"].dtype == np.float32
    assert not np.array_equal(s0["entropy"], jobs.scores.get(PYTHIA, "step8")["entropy"])
    fetched = len(hub.paths("GET"))
    assert _wait(jobs.sweep(PYTHIA, revs, "tab-a"), 120).status == DONE  # only step1000 is new
    new = hub.paths("GET")[fetched:]
    assert any("/resolve/step1000/" in p for p in new) and not any("/resolve/step0/" in p for p in new)
    df = hubjobs.sweep_frame(PYTHIA, revs, jobs.scores)
    assert sorted(set(df["step"])) == [0, 8, 1000] and {"kind", "layer", "head", "value"} <= set(df.columns)
    with pytest.raises(ValueError, match="main"):
        jobs.sweep(PYTHIA, ["main"], "tab-a")


def test_a_sweep_can_be_cancelled_between_and_inside_downloads(hub, jobs):
    hub.hold.clear()
    job = jobs.sweep(PYTHIA, ["step0", "step8"], "tab-a")
    assert hub.holding.wait(30)
    assert "downloading" in job.view().stage and job.view().items_total == 2
    jobs.leave(job.key, "tab-a")
    hub.hold.set()
    assert _wait(job).status == CANCELLED
    assert jobs.scores.get(PYTHIA, "step0") is None


def test_spread_keeps_the_ends_and_spaces_in_log_steps():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 144000, 1000))
    names = [f"step{s}" for s in steps]
    picked = hubjobs.spread(names, steps, 8)
    assert picked[0] == "step0" and picked[-1] == "step143000" and 5 <= len(picked) <= 8
    assert hubjobs.spread(names[:3], steps[:3]) == names[:3]


def test_picker_facts_for_the_catalog_a_folder_and_a_hub_name(hub, tmp_path):
    f = picker.model_facts("EleutherAI/pythia-70m")  # no network: the catalog knows it
    assert f.n_params == pytest.approx(70.4e6, rel=0.01) and not hub.paths()
    c = picker.card(f, 50e9)
    assert c.size.startswith("**70 M parameters** · 6 layers × 8 heads") and "download 160 MB" in c.size
    assert "parallel attention + MLP" in c.layout and c.cost.startswith("Estimate: about") and not c.slow
    assert picker.card(picker.model_facts("TinyLlama/TinyLlama-1.1B-Chat-v1.0"), 50e9).slow
    h = picker.model_facts(REPO)
    assert h.config.n_layer == 2 and not h.download_known
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8, '
                                        '"n_positions": 16, "vocab_size": 20}')
    assert picker.model_facts(str(folder)).config.n_layer == 1
    assert "nothing to download" in picker.card(picker.model_facts(str(folder)), 50e9, folder=True).size
    with pytest.raises(ValueError, match="type a hub name"):
        picker.model_facts(" ")


def test_checkpoint_scores_survive_a_server_restart_on_disk(hub, tmp_path):
    folder = tmp_path / "scores"
    first = HubJobs(scores_dir=folder)
    try:
        assert _wait(first.sweep(PYTHIA, ["step0", "step8"], "tab-a"), 120).status == DONE
    finally:
        first.stop_all()
    assert len(list(folder.glob("*.json"))) == 2
    restarted = HubJobs(scores_dir=folder)  # a new server process: nothing in memory
    try:
        fetched = len(hub.paths("GET"))
        assert _wait(restarted.sweep(PYTHIA, ["step0", "step8"], "tab-b"), 120).status == DONE
        assert hub.paths("GET")[fetched:] == []  # nothing downloaded or scored again
        for rev in ("step0", "step8"):
            np.testing.assert_array_equal(restarted.scores.get(PYTHIA, rev)["induction"],
                                          first.scores.get(PYTHIA, rev)["induction"])
    finally:
        restarted.stop_all()


def test_an_unreadable_or_older_scores_file_is_only_a_cache_miss(tmp_path):
    store = hubjobs.RevisionScores(folder=tmp_path)
    scores = {"induction": np.arange(6, dtype=np.float32).reshape(2, 3)}
    store.put("org/model", "step8", scores)
    (path,) = tmp_path.glob("*.json")
    again = hubjobs.RevisionScores(folder=tmp_path)
    np.testing.assert_array_equal(again.get("org/model", "step8")["induction"], scores["induction"])
    assert again.get("org/model", "step9") is None
    path.write_text("{not json")
    assert hubjobs.RevisionScores(folder=tmp_path).get("org/model", "step8") is None
    path.write_text(json.dumps({"format": hubjobs.SCORES_FORMAT - 1, "name": "org/model", "revision": "step8",
                                "scores": {"induction": [[0.0]]}}))
    assert hubjobs.RevisionScores(folder=tmp_path).get("org/model", "step8") is None
