"""The Streamlit app under AppTest: every page renders, the main controls act, bad input is a
message (never a traceback) and loses nothing.

The shipped default model (assets/default) is used when it loads; otherwise a tiny run is
trained into a temporary folder and named by ``LM_LENS_DEFAULT_MODEL``. Runs started by the
tests go to a temporary ``LM_LENS_RUNS_DIR``.
"""

from __future__ import annotations

import json
import shutil
import os
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import lm_core
from lm_core import runs as lm_runs
from lm_core.corpora import load_corpus
from lm_core.tokenizers import CharTokenizer
from lm_core.train import Trainer

from app.pages import PAGES as PAGE_SPECS
from fakehub import closed_port, point_hub_at
from support import app_env, end_app_training, make_tiny_run  # noqa: F401  (the shared tiny run; tests/conftest.py has the fixtures)

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")
PAGES = [p.file for p in PAGE_SPECS]   # every page, from the one list main.py navigates
NO_TABLE_PAGES = {"views/compare.py"}  # pages that show no table to download as CSV
TIMEOUT = 60


@pytest.fixture
def env(monkeypatch, tmp_path, default_model_dir):
    runs = app_env(monkeypatch, tmp_path, default_model_dir)
    point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{closed_port()}")  # no test reaches the real hub
    yield runs
    end_app_training()


def app() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.run()
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts on the page by widget key -> figure JSON."""
    out = {}
    for el in at.get("plotly_chart"):
        key = el.proto.id.split("-", 2)[-1]
        out[key] = json.loads(el.proto.spec)
    return out


def no_problem(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# -- every page ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_the_default_model(env, page):
    at = app()
    at.switch_page(page).run()
    no_problem(at)
    assert at.title[0].value == next(p.title for p in PAGE_SPECS if p.file == page)
    if page != "views/generate.py":  # Generate shows charts once something is generated
        assert charts(at), "the page drew no figure"
    assert at.sidebar.selectbox(key="model_choice").value == "default"


def test_every_figure_has_a_caption_and_downloads(env):
    at = app()
    for page in PAGES:
        at.switch_page(page).run()
        if page == "views/generate.py":
            at.button(key="gen_btn_next").click().run()
        keys = list(charts(at))
        assert len(at.caption) >= len(keys), page
        downloads = {el.proto.id.split("-", 2)[-1] for el in at.get("download_button")}
        for key in keys:  # PNG and HTML next to every figure
            assert {f"{key}__png", f"{key}__html"} <= downloads, (page, key)
        assert any(d.endswith("csv") for d in downloads) or page in NO_TABLE_PAGES, page  # and a table as CSV


# -- attention ----------------------------------------------------------------------------------


def test_attention_new_text_redraws_the_heatmaps(env):
    at = app()
    before = charts(at)["attn_one"]["data"][0]
    at.text_area(key="inspect_text").set_value("abcabc abcabc").run()
    no_problem(at)
    after = charts(at)
    heat = after["attn_one"]["data"][0]
    assert heat["y"] != before["y"]
    assert heat["y"][:3] == ["0·a", "1·b", "2·c"] and len(heat["y"]) == len(set(heat["y"])) == 13
    assert {"attn_one", "attn_overview", "attn_grid"} <= set(after)
    at.session_state["attn_tab"] = "One query token, every head"  # only the open tab is drawn
    at.run()
    no_problem(at)
    assert "attn_query_all" in charts(at) and "attn_grid" not in charts(at)


def test_attention_head_choice_and_overview_click_state(env):
    at = app()
    at.selectbox(key="attn_layer").set_value(1).run()
    at.selectbox(key="attn_head").set_value(1).run()
    no_problem(at)
    assert charts(at)["attn_one"]["layout"]["title"]["text"] == "Layer 1, head 1"
    at.radio(key="attn_metric").set_value("previous_token").run()
    assert "previous token" in charts(at)["attn_overview"]["layout"]["title"]["text"]


def test_attention_empty_text_is_an_error_and_text_is_kept(env):
    at = app()
    at.text_area(key="inspect_text").set_value("   \n ").run()
    assert not at.exception
    assert at.error and "empty" in at.error[0].value
    assert at.session_state["inspect_text"] == "   \n "


def test_attention_long_text_says_what_was_cut(env, default_model_dir):
    block = lm_runs.load_run_config(default_model_dir).model.block_size
    at = app()
    at.text_area(key="inspect_text").set_value("x" * (block + 40)).run()
    no_problem(at)
    assert any("cut" in w.value and "40 tokens" in w.value for w in at.warning)
    assert len(charts(at)["attn_one"]["data"][0]["y"]) == block


def test_text_survives_page_switches(env):
    at = app()
    at.text_area(key="inspect_text").set_value("hello hello").run()
    at.switch_page("views/generate.py").run()
    at.switch_page("views/attention.py").run()
    assert at.text_area(key="inspect_text").value == "hello hello"


# -- generate ------------------------------------------------------------------------------------


def test_next_token_adds_one_step_each_press(env):
    at = app()
    at.switch_page("views/generate.py").run()
    at.text_area(key="gen_prompt").set_value("def ").run()
    for n in (1, 2, 3):
        at.button(key="gen_btn_next").click().run()
        no_problem(at)
        assert len(at.session_state["gen_trace"].steps) == n
    c = charts(at)
    assert {"gen_candidates", "gen_attn_row", "gen_growing"} <= set(c)
    assert len(c["gen_growing"]["data"][0]["y"]) == 3  # one row per step
    assert "gen_conf" not in c  # a closed tab is not drawn
    at.session_state["gen_tab"] = "Confidence at every step"
    at.run()
    no_problem(at)
    c = charts(at)
    assert "gen_conf" in c and "gen_growing" not in c
    assert len(c["gen_conf"]["data"][0]["x"]) == 3


def test_generate_is_reproducible_and_equals_next_token_presses(env):
    at = app()
    at.switch_page("views/generate.py").run()
    at.number_input(key="gen_max_new").set_value(5).run()
    at.button(key="gen_btn_generate").click().run()
    no_problem(at)
    all_at_once = [s.token_id for s in at.session_state["gen_trace"].steps]
    assert len(all_at_once) == 5
    at.button(key="gen_btn_clear").click().run()
    for _ in range(5):
        at.button(key="gen_btn_next").click().run()
    assert [s.token_id for s in at.session_state["gen_trace"].steps] == all_at_once


def test_generate_shows_the_first_steps_candidates_before_any_press(env):
    from test_app_beyond import _z

    import numpy as np

    at = app()
    at.switch_page("views/generate.py").run()
    no_problem(at)
    model_p = _z(charts(at)["gen_preview"], 0, "x")
    assert len(model_p) == 10 and np.all(np.diff(model_p) <= 1e-7)  # most likely first
    # temperature 0: the first step draws the most likely token for sure
    at.slider(key="gen_temperature").set_value(0.0).run()
    sampled = _z(charts(at)["gen_preview"], 1, "x")
    assert sampled[0] == 1.0 and sampled[1:].sum() == 0.0
    # the first Next token draws exactly that token; the preview gives way to the step's charts
    at.button(key="gen_btn_next").click().run()
    no_problem(at)
    step = at.session_state["gen_trace"].steps[0]
    assert int(step.top_ids[0]) == step.token_id and np.allclose(step.top_before, model_p, atol=1e-6)
    assert "gen_preview" not in charts(at) and "gen_candidates" in charts(at)


def test_branch_from_another_candidate(env):
    at = app()
    at.switch_page("views/generate.py").run()
    at.number_input(key="gen_max_new").set_value(6).run()
    at.button(key="gen_btn_generate").click().run()
    at.slider(key="gen_scrub").set_value(3).run()
    old = at.session_state["gen_trace"]
    pick = at.selectbox(key="gen_branch_pick").value
    at.button(key="gen_btn_branch").click().run()
    no_problem(at)
    new = at.session_state["gen_trace"]
    assert new.steps[2].token_id == int(old.steps[2].top_ids[pick]) != old.steps[2].token_id
    assert new.steps[2].branched and [s.token_id for s in new.steps[:2]] == [s.token_id for s in old.steps[:2]]
    assert len(new.steps) == 6 and "Branched at step 3" in new.branch_note


def test_generate_bad_input(env):
    at = app()
    at.switch_page("views/generate.py").run()
    at.text_area(key="gen_prompt").set_value("  ").run()
    at.button(key="gen_btn_generate").click().run()
    assert not at.exception and "empty" in at.error[0].value
    assert at.session_state["gen_prompt"] == "  "


# -- embeddings and mechanics -----------------------------------------------------------------------


def test_embeddings_page_figures(env, default_model_dir):
    at = app()
    at.switch_page("views/embeddings.py").run()
    no_problem(at)
    c = charts(at)
    assert {"emb_pca2", "emb_pca3", "emb_nn", "emb_pos", "emb_resid"} <= set(c)
    # a character model: every token of the vocabulary is a labelled point
    assert len(c["emb_pca2"]["data"][0]["text"]) == lm_runs.load_run_config(default_model_dir).model.vocab_size
    at.selectbox(key="emb_token").set_value(3).run()
    assert "Closest to" in charts(at)["emb_nn"]["layout"]["title"]["text"]


def test_mechanics_walkthrough_and_training_loop(env):
    at = app()
    at.switch_page("views/mechanics.py").run()
    no_problem(at)
    c = charts(at)
    for key in ("mech_q", "mech_k", "mech_v", "mech_scaled", "mech_masked", "mech_pattern", "mech_z",
                "mech_attn_out", "mech_mlp_out", "mech_logits", "mech_probs"):
        assert key in c, key
    assert {"mech_loss", "mech_grad", "mech_update"} <= set(c)  # the default model's own run history
    at.text_input(key="mech_text").set_value("").run()
    assert not at.exception and at.error


# -- train ------------------------------------------------------------------------------------------


def _tiny_settings(at: AppTest) -> None:
    at.number_input(key="train_n_layer").set_value(1)
    at.number_input(key="train_n_head").set_value(2)
    at.number_input(key="train_n_embd").set_value(16)
    at.number_input(key="train_block_size").set_value(16)
    at.number_input(key="train_batch_size").set_value(2)
    at.number_input(key="train_steps").set_value(100_000)
    at.run()


def _wait_for(pred, timeout=30.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_start_pause_resume_stop_changes_state(env, monkeypatch):
    from app import resources

    at = app()
    at.switch_page("views/train.py").run()
    no_problem(at)
    _tiny_settings(at)
    no_problem(at)
    assert any(m.label == "Parameters" for m in at.metric)
    at.button(key="train_btn_start").click().run()
    no_problem(at)
    reg = resources.registry()
    job = reg.active_job()
    assert job is not None and job.status in ("starting", "running")
    assert job.proc is not None and job.proc.pid != os.getpid()  # trained by a process of its own
    assert _wait_for(lambda: job.status == "running", timeout=60)
    assert job.model_config.n_layer == 1 and job.train_config.max_seconds == 30 * 60
    assert job.train_config.snapshots == lm_core.TrainConfig().snapshots  # kept for time travel
    assert at.button(key="train_btn_start").disabled  # a second start is impossible from the UI
    assert _wait_for(lambda: len(job.history()) >= 1)
    at.run()  # the live view shows the run: the loss and the one chart picked to watch live
    assert set(charts(at)) == {"train_loss_chart", "train_circuits_heat"} or not job.active
    at.button_group(key="train_live_chart").set_value("updates").run()
    assert "train_update_chart" in charts(at) and "train_grad_chart" not in charts(at)

    at.button(key="train_btn_pause").click().run()
    assert job.status == "paused"
    assert {"train_loss_chart", "train_grad_chart", "train_update_chart"} <= set(charts(at))  # paused: all
    at.button(key="train_btn_resume").click().run()
    assert job.status == "running"

    # a second tab (a new session) reattaches to the same run instead of starting one
    # (AppTest gives every session the same id; the session's own state tells two apart here)
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from app.widgets import ui as ui_mod

    monkeypatch.setattr(ui_mod, "session_id", lambda: str(id(get_script_run_ctx().session_state)))
    at.run()
    other = app()
    other.switch_page("views/train.py").run()
    assert other.button(key="train_btn_start").disabled
    assert any(job.run_id in i.value for i in other.info)
    # two tabs on the live view share one refresh budget: each redraws half as often
    shared = [c.value for c in other.caption if "tabs watch this run" in c.value]
    assert shared and other.session_state["train_watchers"] >= 2
    assert f"they refresh every {10 * other.session_state['train_watchers']} s" in shared[0]

    # the run being trained can be inspected from any page
    at.sidebar.selectbox(key="model_choice").set_value(f"live:{job.run_id}").run()
    at.switch_page("views/attention.py").run()
    no_problem(at)
    assert "live" in at.sidebar.selectbox(key="model_choice").value
    assert any("1 layers" in c.value for c in at.sidebar.caption)
    assert charts(at)["attn_one"]
    at.switch_page("views/train.py").run()

    at.button(key="train_btn_stop").click().run()
    no_problem(at)
    assert job.status in ("stopping", "stopped")  # acknowledged at once
    assert _wait_for(lambda: job.status == "stopped", timeout=60)
    assert (env / job.run_id / "config.json").exists()
    assert lm_runs.load_run(env / job.run_id).status == "stopped"
    at.run()
    picker = at.sidebar.selectbox(key="model_choice")
    from app.active import run_label

    assert run_label(job.run_id, "stopped", job.step_count) in picker.options  # the saved run is listed
    # the ended live run is followed to its run folder
    assert at.session_state["model_choice"] == f"run:{(env / job.run_id).resolve()}"


def test_registry_never_starts_two_runs(env):
    from app import resources
    from app.core.jobs import AlreadyTraining

    at = app()
    at.switch_page("views/train.py").run()
    _tiny_settings(at)
    at.button(key="train_btn_start").click().run()
    reg = resources.registry()
    job = reg.active_job()
    with pytest.raises(AlreadyTraining, match=f"Run '{job.run_id}' is .* on this server"):
        reg.start("another", lambda: pytest.fail("must not build a second run"))
    job.stop()
    job.wait(60)


def test_settings_that_do_not_fit_are_refused(env):
    at = app()
    at.switch_page("views/train.py").run()
    at.number_input(key="train_n_embd").set_value(30)
    at.number_input(key="train_n_head").set_value(4)
    at.run()
    assert not at.exception
    assert any("divisible" in e.value for e in at.error)
    assert at.button(key="train_btn_start").disabled


def test_paste_empty_text_keeps_the_loaded_corpus(env):
    at = app()
    at.switch_page("views/train.py").run()
    before = at.session_state["train_corpus"]
    at.radio(key="train_source").set_value("Paste text").run()
    at.text_area(key="train_paste").set_value("   ").run()
    at.button(key="train_btn_paste").click().run()
    assert not at.exception and "empty" in at.error[0].value
    assert at.session_state["train_corpus"] is before


def test_text_shorter_than_the_context_is_refused_when_chosen(env):
    at = app()
    at.switch_page("views/train.py").run()
    at.radio(key="train_source").set_value("Paste text").run()
    at.text_area(key="train_paste").set_value("a short text " * 5).run()
    at.button(key="train_btn_paste").click().run()
    assert not at.exception
    # said as soon as the text is chosen, with what to do, and Start cannot be pressed
    assert any("fewer than block_size + 1" in e.value and "smaller context" in e.value for e in at.error)
    assert at.button(key="train_btn_start").disabled
    at.number_input(key="train_block_size").set_value(4).run()  # a context that fits: accepted
    assert not at.error and not at.button(key="train_btn_start").disabled
    assert not any(env.iterdir())  # nothing was written


def test_tiny_shakespeare_is_there_offline_and_a_failed_fresh_download_keeps_it(env, monkeypatch):
    monkeypatch.delenv("LM_LENS_TINY_SHAKESPEARE", raising=False)
    monkeypatch.setenv("LM_LENS_TINY_SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    at = app()
    at.switch_page("views/train.py").run()
    at.radio(key="train_source").set_value("Tiny Shakespeare").run()
    no_problem(at)
    assert at.session_state["train_corpus"].spec == "tiny-shakespeare"  # the shipped copy, no network
    assert len(at.session_state["train_corpus"].text) == 1_115_394
    at.button(key="train_btn_download").click().run()
    assert not at.exception
    assert at.error and "kept" in at.error[0].value
    assert len(at.session_state["train_corpus"].text) == 1_115_394  # the copy it had is kept
    # no "Connecting…" bar left above the error (a run from an earlier test may show its own bar)
    assert not [p for p in at.get("progress") if "Connecting" in str(p.proto)]


def test_synthetic_corpus_and_bpe_tokenizer_stats(env):
    at = app()
    at.switch_page("views/train.py").run()
    at.radio(key="train_source").set_value("Synthetic task").run()
    no_problem(at)
    assert at.session_state["train_corpus"].spec.startswith("synthetic:")
    at.radio(key="train_tokenizer").set_value("bpe").run()
    no_problem(at)
    tpc = [m for m in at.metric if m.label == "Tokens per character"][0]
    assert float(tpc.value) < 1.0


# -- the model picker -------------------------------------------------------------------------------


def test_a_run_folder_that_fails_to_load_is_an_error_not_a_crash(env, default_model_dir):
    bad = env / "broken"
    shutil.copytree(default_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    at = app()
    at.session_state["model_choice"] = f"run:{bad.resolve()}"
    at.run()
    assert not at.exception
    assert any("could not be loaded" in e.value for e in at.sidebar.error)
    assert charts(at)  # the default model stands in; the page still works
    # ... and the page says so, not only the sidebar: never a silent fallback
    main_warnings = [w.value for w in at.warning if w not in list(at.sidebar.warning)]
    assert any("shows the shipped default model" in w and "broken" in w for w in main_warnings)


def test_run_labels_put_what_tells_runs_apart_first():
    from app.active import run_label

    a = run_label("tiny-shakespeare-20261201-041500", "finished", 4000)
    b = run_label("tiny-shakespeare-20261201-041733", "finished", 4000)
    # what differs comes first, so a sidebar that cuts the end of a label still tells them apart
    assert a.startswith("12-01 04:15:00 · tiny") and b.startswith("12-01 04:17:33 · tiny")
    assert run_label("my-run", "stopped") == "my-run · stopped"


def test_a_good_run_folder_can_be_picked(env):
    make_tiny_run(env / "mine", steps=10)
    at = app()
    picker = at.sidebar.selectbox(key="model_choice")
    assert "mine · finished @ 10" in picker.options  # labels shown to the user
    picker.set_value(f"run:{(env / 'mine').resolve()}").run()
    no_problem(at)
    assert at.session_state["model_choice"].endswith("/mine")
    assert any("2 layers" in c.value for c in at.sidebar.caption)
    assert charts(at)
