"""The sidebar's pretrained-model picker and a hub model's training checkpoints, under AppTest,
against the fake hub of ``tests/fakehub.py`` (no network): the curated list with sizes, layouts
and estimates before any download; a download in the background with progress, Cancel, and
the model opening from the cache with the hub gone; offline, one sentence; the time-travel
slider over a Pythia-like repo's step branches; circuits over those checkpoints."""

from __future__ import annotations

import time

import pytest

from lm_core import catalog

pytest.importorskip("transformers", reason="transformers is not installed (optional extra)")
from fakehub import FakeHub, closed_port, point_hub_at, serving, stop, tiny_gpt2_repo, tiny_pythia_revisions  # noqa: E402
from test_app import app, charts, env, no_problem  # noqa: E402,F401  (fixtures)

REPO = "tiny-org/tiny-gpt2"
PYTHIA = "tiny-org/tiny-pythia"
STEPS = [0, 1, 8, 1000]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    files, _, _ = tiny_gpt2_repo(tmp_path_factory.mktemp("app-gpt2"))
    revs, _, _ = tiny_pythia_revisions(tmp_path_factory.mktemp("app-pythia"), STEPS)
    return {REPO: {"main": files}, PYTHIA: revs}


@pytest.fixture
def hub(env, repos, tmp_path, monkeypatch):
    from app import resources

    with serving(FakeHub(repos)) as server:
        point_hub_at(monkeypatch, tmp_path, server.url)
        resources.pretrained_model.clear()  # every test opens its models from its own cache
        yield server
        resources.hub_jobs().stop_all()


def _captions(at) -> str:
    return "\n".join(c.value for c in at.sidebar.caption)


def _pick_pretrained(at, name: str | None = None):
    at.sidebar.selectbox(key="model_choice").set_value("pretrained").run()
    if name is not None:
        at.sidebar.selectbox(key="pretrained_pick").set_value("other").run()
        at.sidebar.text_input(key="pretrained_name").set_value(name).run()
    return at


def _wait_for_jobs(timeout: float = 60) -> None:
    from app import resources

    jobs = resources.hub_jobs()
    t0 = time.time()
    while time.time() - t0 < timeout:
        with jobs._lock:
            running = [j for j in jobs._jobs.values() if j.status == "running"]
        if not running:
            return
        time.sleep(0.05)
    raise AssertionError("a hub job did not end")


def _load(at, name: str):
    _pick_pretrained(at, name)
    at.sidebar.button(key="pretrained_btn_load").click().run()
    _wait_for_jobs()
    at.run()
    return at


def test_the_catalog_shows_size_layout_and_estimate_before_any_download(hub):
    at = _pick_pretrained(app())
    no_problem(at)
    pick = at.sidebar.selectbox(key="pretrained_pick")
    assert pick.options[:len(catalog.CATALOG)] == [e.title for e in catalog.CATALOG]
    assert pick.value == "gpt2" and at.sidebar.text_input(key="pretrained_name").value == "gpt2"
    text = _captions(at)
    assert "**124 M parameters** · 12 layers × 12 heads" in text and "download 524 MB" in text
    assert "LayerNorm · learned position embedding · GELU MLP · multi-head (12 key/value heads)" in text
    assert "Estimate: about" in text and "per inspection of 128 tokens" in text and "not measured" in text
    assert at.sidebar.button(key="pretrained_btn_load").label == "Download and load"

    pick.set_value("HuggingFaceTB/SmolLM2-135M").run()
    assert at.sidebar.text_input(key="pretrained_name").value == "HuggingFaceTB/SmolLM2-135M"
    text = _captions(at)
    assert "**135 M parameters** · 30 layers × 9 heads" in text
    assert "RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query (3 query heads per key/value head) " \
           "(3 key/value heads)" in text
    assert not any("Slow" in w.value for w in at.sidebar.warning)
    at.sidebar.selectbox(key="pretrained_pick").set_value("TinyLlama/TinyLlama-1.1B-Chat-v1.0").run()
    assert "**1.10 B parameters**" in _captions(at)
    assert any("Slow on a laptop CPU" in w.value for w in at.sidebar.warning)
    no_problem(at)
    assert not any("/resolve/" in p or "/api/models" in p for p in hub.paths())  # the catalog needs no network


def test_any_hub_name_shows_its_config_then_downloads_and_opens_from_the_cache_offline(hub):
    at = _pick_pretrained(app(), REPO)
    text = _captions(at)
    assert "2 layers × 2 heads · width 32" in text and "download about" in text  # only config.json was read
    assert [p.rsplit("/", 1)[1] for p in hub.paths("GET") if "/resolve/" in p] == ["config.json"]
    at.sidebar.button(key="pretrained_btn_load").click().run()
    _wait_for_jobs()
    at.run()
    no_problem(at)
    assert f"Showing **{REPO}**" in _captions(at) and "2 layers · 2 heads · width 32" in _captions(at)
    assert charts(at)  # the Attention page draws the downloaded model

    from app import resources

    stop(hub)  # no network from here: a new session opens it from the cache
    resources.pretrained_model.clear()
    asked = len(hub.log)
    at2 = _pick_pretrained(app(), REPO)
    assert "In the local cache" in _captions(at2)
    assert at2.sidebar.button(key="pretrained_btn_load").label == "Load"
    at2.sidebar.button(key="pretrained_btn_load").click().run()
    no_problem(at2)
    assert f"Showing **{REPO}**" in _captions(at2) and len(hub.log) == asked


def test_a_download_shows_progress_and_can_be_cancelled(hub):
    from app import resources

    hub.hold.clear()  # the weights stop after their first kilobyte
    at = _pick_pretrained(app(), REPO)
    at.sidebar.button(key="pretrained_btn_load").click().run()
    assert hub.holding.wait(30), hub.log
    at.run()
    no_problem(at)
    bars = at.sidebar.get("progress")
    assert bars and "tiny-org/tiny-gpt2" in bars[0].proto.text and "model.safetensors" in bars[0].proto.text
    at.sidebar.button(key="pretrained_btn_cancel").click().run()
    assert any(i.value == "Download cancelled." for i in at.sidebar.info)
    assert not at.sidebar.get("progress")
    hub.hold.set()
    _wait_for_jobs()
    at.run()
    no_problem(at)
    assert not at.sidebar.get("progress") and at.sidebar.button(key="pretrained_btn_load").label == "Download and load"
    job = resources.hub_jobs().get(("download", REPO, None))
    assert job is None or job.status == "cancelled"
    from lm_core import hub as lm_hub

    assert lm_hub.cached_snapshot(REPO) is None
    assert f"Showing **{REPO}**" not in _captions(at)


def test_offline_and_not_cached_says_so_in_one_sentence(env, tmp_path, monkeypatch):
    port = closed_port()
    point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    at = _pick_pretrained(app(), REPO)
    assert not at.exception
    [w] = [w.value for w in at.sidebar.warning]
    assert w == f"{REPO} is not in the local cache and the hub at 127.0.0.1:{port} ({_refused(w)}) cannot be " \
                f"reached, so it cannot be downloaded now."
    at.sidebar.button(key="pretrained_btn_load").click().run()
    assert any("cannot be downloaded now" in e.value for e in at.sidebar.error)
    assert charts(at)  # the default model stands in


def _refused(w: str) -> str:
    return w.split("(", 1)[1].split(")", 1)[0]


# -- a hub model's training checkpoints ---------------------------------------------------------------


def test_time_travel_through_the_checkpoints_of_a_hub_model(hub):
    at = _load(app(), PYTHIA)
    no_problem(at)
    slider = at.sidebar.select_slider(key="time_step")
    assert slider.options == [f"{s:,}" + (" (latest)" if s == 1000 else "") for s in STEPS]
    assert slider.value == 1000
    before = charts(at)["attn_one"]["data"][0]["z"]
    slider.set_value(8).run()
    assert any("Downloading the checkpoint of step 8" in w.value for w in at.sidebar.warning)
    _wait_for_jobs()
    at.run()
    no_problem(at)
    assert "Checkpoint of training step **8**" in _captions(at)
    assert any("/resolve/step8/" in p for p in hub.paths("GET")), hub.log
    assert charts(at)["attn_one"]["data"][0]["z"] != before  # the pages show step 8's weights


def test_circuits_over_the_checkpoints_of_a_hub_model(hub):
    at = _load(app(), PYTHIA)
    at.switch_page("views/train.py").run()
    no_problem(at)
    assert at.multiselect(key="rev_steps").value == ["step0", "step1", "step8", "step1000"]
    at.multiselect(key="rev_steps").set_value(["step0", "step8", "step1000"]).run()
    at.button(key="rev_btn_sweep").click().run()
    _wait_for_jobs(120)
    at.run()
    no_problem(at)
    fig = charts(at)["rev_circuits_heat"]
    assert fig["layout"]["xaxis"]["type"] == "log"  # checkpoints spread over decades of steps
    assert fig["layout"]["xaxis"]["ticktext"] == ["0", "8", "1,000"]
    assert _numbers(fig["data"][0]["x"]) == [1, 9, 1001]  # step + 1: step 0 has a place on a log axis
    assert len(fig["data"][0]["y"]) == 2 * 4  # every head of 2 layers × 4
    lines = charts(at)["rev_circuits_lines"]
    assert len(lines["data"]) == 8 and _numbers(lines["data"][0]["customdata"]) == [0, 8, 1000]


def _numbers(x) -> list[float]:
    """A figure's numeric array (a list, or Plotly's typed array) as a list."""
    if isinstance(x, list):
        return [float(v) for v in x]
    import base64

    import numpy as np

    return np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"])).astype(float).tolist()
