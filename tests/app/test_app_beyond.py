"""Beyond the first pages, under AppTest: time travel through weight snapshots, the logit lens,
ablation (numbers checked by hand), the Compare page, the export bundle (read back with
``lm_core.export.read_bundle``), circuits forming during training and the one-click induction
run, and a GPT-2-shaped model (12 layers × 12 heads, byte-level BPE) on every page.

The shared fixtures come from ``tests/conftest.py`` (``default_model_dir``, ``tiny_run``) and ``test_app.py`` (``env``).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import lm_core
from lm_core import analysis
from lm_core import runs as lm_runs
from lm_core.corpora import load_corpus
from lm_core.export import read_bundle
from lm_core.presets import PRESETS
from lm_core.tokenizers import CharTokenizer
from lm_core.train import Trainer

from test_app import PAGES as ALL_PAGES  # every page, from app/pages.py
from test_app import _wait_for, app, charts, env, no_problem  # noqa: F401  (fixtures)


def _z(fig: dict, trace: int = 0, field: str = "z") -> np.ndarray:
    """A heatmap's z (or another array field) as numpy, from the figure JSON (a typed array
    {dtype, bdata, shape} or lists)."""
    import base64

    z = fig["data"][trace][field]
    if isinstance(z, dict):
        arr = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
        shape = z.get("shape")
        if isinstance(shape, str):
            shape = [int(s) for s in shape.split(",")]
        return arr.reshape(shape) if shape else arr
    return np.asarray(z, dtype=np.float64)


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory) -> Path:
    """A tiny run with weight snapshots (step 0 … 40), trained by the real Trainer."""
    path = tmp_path_factory.mktemp("snap") / "snaprun"
    text = load_corpus("builtin:python-docs")[:40_000]
    tok = CharTokenizer.train(text)
    torch.manual_seed(1)
    cfg = lm_core.ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    tc = lm_core.TrainConfig(batch_size=4, max_steps=40, eval_interval=20, eval_iters=1, log_interval=10,
                             warmup_steps=2, checkpoint_interval=40, sample_tokens=0, learning_rate=3e-3,
                             snapshots=6)
    Trainer(lm_core.GPT(cfg), tok, text, tc, run_dir=path, corpus="builtin:python-docs").run()
    return path


def _pick_run(at, env_runs: Path, run: Path, name: str = "snaprun") -> Path:
    dest = env_runs / name
    shutil.copytree(run, dest)
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value(f"run:{dest.resolve()}").run()
    return dest


# -- the new pages ------------------------------------------------------------------------------------


def test_logit_lens_shows_lm_core_numbers(env, default_model_dir):
    at = app()
    at.switch_page("views/logit_lens.py").run()
    at.text_area(key="inspect_text").set_value("def add(a, b):").run()
    no_problem(at)
    c = charts(at)
    run = lm_runs.load_run(default_model_dir)
    ids = run.tokenizer.encode("def add(a, b):")
    lens = analysis.logit_lens(run.model, ids, top_k=5)
    top = _z(c["lens_top"])
    assert top.shape == (run.config.model.n_layer + 1, len(ids))
    np.testing.assert_allclose(top, lens.top_probs[:, :, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(_z(c["lens_true"]), lens.true_next_prob.numpy(), atol=1e-5)
    # cells are written with the top token; the last row is the model's own output
    assert c["lens_top"]["data"][0]["y"][0] == "embeddings"
    assert c["lens_top"]["data"][0]["x"][:3] == ["0·d", "1·e", "2·f"]
    assert at.dataframe and len(at.dataframe[0].value) == run.config.model.n_layer + 1


# -- time travel --------------------------------------------------------------------------------------


def test_time_travel_slider_changes_what_the_views_show(env, snap_run):
    at = app()
    dest = _pick_run(at, env, snap_run)
    no_problem(at)
    steps = lm_runs.list_snapshot_steps(dest)
    assert len(steps) >= 3 and steps[0] == 0
    slider = at.sidebar.select_slider(key="time_step")
    assert slider.value == 40  # the latest weights
    final = _z(charts(at)["attn_one"])

    slider.set_value(0).run()
    no_problem(at)
    assert any("step 0" in i.value for i in at.info)  # the page says which weights it shows
    early = _z(charts(at)["attn_one"])
    assert final.shape == early.shape and not np.allclose(final, early, atol=1e-4)
    # the numbers are those of the snapshot itself
    run = lm_runs.load_run(dest)
    ids = run.tokenizer.encode(at.text_area(key="inspect_text").value)[: run.config.model.block_size]
    _, cache = run.load_snapshot(0).run_with_cache(torch.tensor([ids]))
    np.testing.assert_allclose(early, cache["pattern", 0][0, 0].numpy(), atol=1e-5)

    # the step stays chosen on the other pages; the embedding map is aligned to the latest weights
    at.switch_page("views/embeddings.py").run()
    no_problem(at)
    assert at.session_state["time_step"] == 0
    assert "aligned" in charts(at)["emb_pca2"]["layout"]["xaxis"]["title"]["text"]
    at.switch_page("views/logit_lens.py").run()
    no_problem(at)
    lens_early = _z(charts(at)["lens_top"])
    at.sidebar.select_slider(key="time_step").set_value(40).run()
    assert not np.allclose(_z(charts(at)["lens_top"]), lens_early)

    # Generate: the same prompt and seed, generated again by another step's weights
    at.switch_page("views/generate.py").run()
    at.number_input(key="gen_max_new").set_value(4).run()
    at.button(key="gen_btn_generate").click().run()
    late = at.session_state["gen_trace"]
    at.sidebar.select_slider(key="time_step").set_value(steps[1]).run()
    no_problem(at)
    again = at.session_state["gen_trace"]
    assert again is not None and len(again.steps) == 4 and again.prompt_ids == late.prompt_ids
    assert again.model_key != late.model_key
    assert any("Generated again" in i.value for i in at.info)


def test_procrustes_keeps_the_map_of_the_latest_step_in_place(snap_run):
    from app.core import inspection as compute

    run = lm_runs.load_run(snap_run)
    ref = compute.embedding_projection(run.model)
    same = compute.embedding_projection(run.model, ref)
    np.testing.assert_allclose(same["coords"], ref["coords"], atol=1e-4)  # aligning onto itself changes nothing
    early = compute.embedding_projection(run.load_snapshot(0), ref)
    raw = compute.embedding_projection(run.load_snapshot(0))
    assert early["aligned"] == 1.0
    # a rotation: distances between tokens are unchanged, and it is the closest one to the reference
    d = lambda c: np.linalg.norm(c[:, None] - c[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(early["coords"]), d(raw["coords"]), atol=1e-3)
    assert np.linalg.norm(early["coords"] - ref["coords"]) <= np.linalg.norm(raw["coords"] - ref["coords"]) + 1e-4


def test_long_texts_are_capped_for_large_contexts():
    from app.core import text as compute

    small = lm_core.ModelConfig(vocab_size=10, block_size=64, n_layer=1, n_head=1, n_embd=8)
    gpt2 = lm_core.ModelConfig(vocab_size=10, block_size=1024, n_layer=12, n_head=12, n_embd=48)
    assert compute.inspect_limit(small) == {"block_size": 64, "limit": "the model reads"}
    assert compute.inspect_limit(gpt2)["block_size"] == compute.MAX_INSPECT_TOKENS
    tok = CharTokenizer.train("ab ")
    enc = compute.encode_text(tok, "ab " * 200, **compute.inspect_limit(gpt2))
    assert len(enc.ids) == compute.MAX_INSPECT_TOKENS and "this page shows" in enc.note and "1024" in enc.note


def test_compare_two_snapshots_side_by_side(env, snap_run):
    at = app()
    dest = _pick_run(at, env, snap_run)
    at.switch_page("views/compare.py").run()
    no_problem(at)
    assert at.select_slider(key="cmp_a_step").value == 0 and at.select_slider(key="cmp_b_step").value == 40
    c = charts(at)
    a, b, diff = _z(c["cmp_attn_a"]), _z(c["cmp_attn_b"]), _z(c["cmp_attn_diff"])
    T = a.shape[0]
    low = np.tril_indices(T)
    np.testing.assert_allclose(diff[low], (b - a)[low], atol=1e-5)
    assert np.isnan(diff[np.triu_indices(T, 1)]).all()  # the future is blank
    losses = [m for m in at.metric if m.label.startswith("Loss on this text")]
    run = lm_runs.load_run(dest)
    ids = run.tokenizer.encode(at.text_area(key="inspect_text").value)[:32]
    want_b = analysis.loss_on(run.model, ids)
    assert float(losses[1].value) == pytest.approx(want_b, abs=1e-3)
    at.selectbox(key="cmp_head").set_value(1).run()
    assert "head 1" in charts(at)["cmp_attn_a"]["layout"]["title"]["text"]


# -- ablation -------------------------------------------------------------------------------------------


def _by_hand(model, ids, heads, mlps, mode):
    """Loss with heads/MLPs ablated, written out with run_with_hooks (not through analysis)."""
    def z_hook(hs):
        def fn(z, name):
            z = z.clone()
            for h in hs:
                z[:, :, h] = 0.0 if mode == "zero" else z[:, :, h].mean(dim=1, keepdim=True)
            return z
        return fn

    def mlp_hook(t, name):
        return torch.zeros_like(t) if mode == "zero" else t.mean(dim=1, keepdim=True).expand_as(t).clone()

    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    hooks = [(f"blocks.{l}.attn.hook_z", z_hook(hs)) for l, hs in by_layer.items()]
    hooks += [(f"blocks.{l}.hook_mlp_out", mlp_hook) for l in mlps]
    idx = torch.tensor([ids])
    with torch.no_grad():
        logits = model.run_with_hooks(idx, fwd_hooks=hooks)
        base = model(idx)
    loss = lambda lg: float(F.cross_entropy(lg[0, :-1], idx[0, 1:]))  # noqa: E731
    return loss(base), loss(logits), torch.softmax(logits[0, -2], -1)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_numbers_equal_a_hand_computation(env, default_model_dir, mode):
    at = app()
    at.switch_page("views/ablation.py").run()
    text = "def add(a, b):\n    return a + b\n"
    at.text_area(key="inspect_text").set_value(text)
    at.radio(key="abl_mode").set_value(mode)
    at.multiselect(key="abl_heads").set_value(["L0 H1", "L1 H0"])
    at.run()
    at.pills(key="abl_mlps").set_value([1]).run()
    no_problem(at)
    summary = at.dataframe[0].value
    run = lm_runs.load_run(default_model_dir)
    ids = run.tokenizer.encode(text)
    before, after, probs = _by_hand(run.model, ids, [(0, 1), (1, 0)], [1], mode)
    row = summary.iloc[0]
    assert row["intact"] == pytest.approx(before, abs=1e-4)
    assert row["ablated"] == pytest.approx(after, abs=1e-4)
    assert row["difference"] == pytest.approx(after - before, abs=1e-4)
    # lm_core's own ablation agrees
    logits = analysis.ablate_heads(run.model, ids, [(0, 1), (1, 0)], mlp_layers=[1], mode=mode)
    assert analysis.loss_on(run.model, ids, logits) == pytest.approx(after, abs=1e-4)
    # the val loss row: a fixed slice of the training corpus' validation part
    assert "Val loss" in summary.iloc[1][""]
    # the next-token bars (after the last-but-one token) show the ablated probabilities
    bars = charts(at)["abl_dist"]["data"]
    after_x = bars[1]["x"]
    after_x = np.frombuffer(__import__("base64").b64decode(after_x["bdata"]), np.float32) \
        if isinstance(after_x, dict) else np.asarray(after_x)
    assert float(after_x.max()) == pytest.approx(float(probs.max()), abs=1e-4)
    # the grid marks what is off; switching everything back on restores the intact loss
    grid = [k for k in charts(at) if k.startswith("abl_grid")][0]
    assert len(charts(at)[grid]["layout"]["shapes"]) == 2
    at.button(key="abl_btn_reset").click().run()
    row = at.dataframe[0].value.iloc[0]
    assert row["ablated"] == pytest.approx(before, abs=1e-5) and row["difference"] == pytest.approx(0, abs=1e-6)


def test_single_head_effects_match_lm_core(env, default_model_dir):
    at = app()
    at.switch_page("views/ablation.py").run()
    no_problem(at)
    grid = [k for k in charts(at) if k.startswith("abl_grid")][0]
    z = _z(charts(at)[grid])
    run = lm_runs.load_run(default_model_dir)
    ids = run.tokenizer.encode(at.text_area(key="inspect_text").value)[: run.config.model.block_size]
    df = analysis.head_ablation_effects(run.model, ids, mode="zero")
    want = df.pivot(index="layer", columns="head", values="loss_increase").to_numpy()
    np.testing.assert_allclose(z, want, atol=1e-4)


# -- export ---------------------------------------------------------------------------------------------


def test_export_bundle_round_trips(env, default_model_dir):
    at = app()
    text = "abc abc"
    at.text_area(key="inspect_text").set_value(text).run()
    at.sidebar.button(key="export_btn").click().run()
    no_problem(at)
    rec = at.session_state["export"]
    bundle = read_bundle(rec.data)
    run = lm_runs.load_run(default_model_dir)
    ids = run.tokenizer.encode(text)
    assert bundle.config["model"] == run.config.model.to_dict()
    assert bundle.meta["text"] == text and bundle.meta["tokens"] == ids and bundle.meta["page"] == "Attention"
    pd.testing.assert_frame_equal(bundle.history.reset_index(drop=True), run.history.reset_index(drop=True),
                                  check_dtype=False)
    names = set(bundle.figures)
    assert {"index.html", "attention-l0-h0.html", "head-scores-induction.html"} <= names
    if bundle.meta["png"] == "rendered":
        assert "attention-l0-h0.png" in names and bundle.figures["attention-l0-h0.png"][:4] == b"\x89PNG"
    else:  # no Chrome here: HTML only, and the page says so
        assert bundle.meta["png"].startswith("not rendered") and at.sidebar.warning
    _, cache = run.model.run_with_cache(torch.tensor([ids]))
    torch.testing.assert_close(bundle.cache["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_pattern"])
    assert "cache.safetensors" in bundle.readme
    assert any(b.label.startswith("Download bundle") for b in at.sidebar.get("download_button"))


def test_bundle_without_png_says_so(default_model_dir, monkeypatch):
    from app import figures as Fg
    from app.core import bundle as B
    from app.core.bundle import FigureRecord
    from app.core.models import load_folder

    def no_chrome(figs):
        raise RuntimeError("no Chrome found")

    monkeypatch.setattr(B, "render_pngs", no_chrome)
    lm = load_folder(default_model_dir, "default")
    fig = Fg.attention_heatmap(np.eye(2), ["0·a", "1·b"])
    built = B.build(lm, "Attention", {"attn_one": FigureRecord("attention", fig, "cap")}, None)
    back = read_bundle(built.data)
    assert back.meta["png"].startswith("not rendered") and "no Chrome" in back.meta["png"]
    assert set(back.figures) == {"attention.html", "index.html"} and built.notes
    assert back.cache == {} and back.meta["text"] is None


# -- circuits and the induction button ------------------------------------------------------------------


def test_induction_bump_rule():
    from app.core import circuits

    def frame(series):  # {(layer, head): [scores per step]}
        steps = [0, 50, 100, 150]
        per = []
        for i, s in enumerate(steps):
            z = np.zeros((2, 2), dtype=np.float32)
            for (l, h), v in series.items():
                z[l, h] = v[i]
            per.append((s, {"induction": z}))
        return circuits.long_frame(per)

    b = circuits.induction_bump(frame({(1, 1): [0.0, 0.1, 0.5, 0.9]}))
    assert (b.step, b.layer, b.head, b.rule) == (100, 1, 1, "threshold")
    b = circuits.induction_bump(frame({(1, 0): [0.0, 0.05, 0.25, 0.3]}))  # never 0.4: where it rose fastest
    assert (b.step, b.rule) == (100, "fastest rise")
    assert circuits.induction_bump(frame({(0, 0): [0.0, 0.01, 0.02, 0.01]})) is None
    assert circuits.induction_bump(pd.DataFrame(columns=["step", "kind", "layer", "head", "value"])) is None
    z, steps, heads = circuits.matrix(frame({(1, 1): [0.0, 0.1, 0.5, 0.9]}), "induction")
    assert z.shape == (4, 4) and steps == [0, 50, 100, 150] and heads[3] == (1, 1)


def test_induction_button_starts_the_induction_preset_and_circuits_show(env, monkeypatch):
    from app.core import bundle as B
    from app import resources

    at = app()
    at.switch_page("views/train.py").run()
    no_problem(at)
    at.button(key="train_btn_induction").click().run()
    no_problem(at)
    job = resources.registry().active_job()
    try:
        assert job is not None and _wait_for(lambda: job.status == "running", timeout=60)
        cfg, tc = job.model_config, job.train_config
        want = PRESETS["induction"].model
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == tuple(
            want[k] for k in ("n_layer", "n_head", "n_embd", "block_size"))
        preset = PRESETS["induction"]
        assert tc.max_steps == preset.train["max_steps"] and tc.batch_size == preset.train["batch_size"]
        assert tc.eval_interval == max(10, tc.max_steps // 20)  # ~20 measurements of the head scores
        assert lm_runs.load_run_config(job.run_dir).corpus == "synthetic:induction"
        assert at.session_state["train_preset"] == "induction" and at.session_state["train_tokenizer"] == "char"
        # the text to inspect becomes a repeated run of letters (it was the untouched default)
        assert at.session_state["inspect_text"] == "xkcdmzqwhtbf" * 2
        # circuits: head scores, recorded by the trainer or read from the first weight snapshots
        assert _wait_for(lambda: len(lm_runs.list_snapshot_steps(job.run_dir)) >= 3 and len(job.history()) >= 1,
                         timeout=60)
        at.run()
        no_problem(at)
        c = charts(at)
        assert "train_circuits_heat" in c
        assert c["train_circuits_heat"]["data"][0]["y"][:2] == ["L0 H0", "L0 H1"]
        watch = [b for b in at.button_group if b.key == "train_live_chart"]
        if watch:  # still training: the loss and the one chart picked redraw, nothing else
            assert set(c) == {"train_loss_chart", "train_circuits_heat"}
            watch[0].set_value("gradients").run()
            no_problem(at)
            if [b for b in at.button_group if b.key == "train_live_chart"]:
                assert set(charts(at)) == {"train_loss_chart", "train_grad_chart"}
            watch[0].set_value("circuits").run()
        else:  # it already ended: every chart
            assert {"train_circuits_lines", "train_grad_chart", "train_update_chart", "train_tps_chart"} <= set(c)

        # the Train page's bundle is the run's (config, history, figures), not the sidebar model's;
        # without Chrome it holds HTML only and says so
        def no_chrome(figs):
            raise RuntimeError("Chrome not found")

        monkeypatch.setattr(B, "render_pngs", no_chrome)
        at.sidebar.button(key="export_btn").click().run()
        no_problem(at)
        back = read_bundle(at.session_state["export"].data)
        assert back.config["source"] == job.run_id and back.config["train"]["max_steps"] == tc.max_steps
        assert back.meta["model_name"] == job.run_id and len(back.history) >= 1
        assert any(n.startswith("circuits-induction") and n.endswith(".html") for n in back.figures)
        assert not any(n.endswith(".png") for n in back.figures) and back.meta["png"].startswith("not rendered")
        assert any("HTML only" in w.value for w in at.sidebar.warning)
    finally:
        job.stop()
        job.wait(60)


def test_circuits_on_loss_curve_from_recorded_scores(monkeypatch):
    """A recorded frame (as the trainer writes it) marks the bump on the loss curve."""
    from app import figures as Fg
    from app.core import circuits

    per = [(s, {"induction": np.array([[0.0, 0.1], [0.0, 0.2 * i]], dtype=np.float32)}) for i, s in enumerate([0, 100, 200, 300])]
    df = circuits.long_frame(per)
    bump = circuits.induction_bump(df)
    hist = pd.DataFrame({"step": [0, 100, 200, 300], "train_loss": [4.0, 3.0, 2.0, 1.5], "val_loss": [np.nan] * 4})
    fig = Fg.loss_curves(hist, marks=[(bump.step, bump.label())])
    assert bump.step == 200  # 0.2 × 2 reaches the 0.4 threshold
    assert fig.layout.shapes[0].x0 == 200 and "L1 H1" in fig.layout.annotations[0].text


# -- pretrained: a GPT-2-shaped model on every page -------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A randomly initialised GPT-2 (12 layers × 12 heads, 48 wide) saved by transformers, with a
    small byte-level BPE tokenizer.json: what `save_pretrained` of a real GPT-2 looks like."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("gpt2") / "gpt2-tiny"
    tok = lm_core.BPETokenizer.train(load_corpus("builtin:python-docs")[:30_000], vocab_size=320)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=48, n_positions=64, vocab_size=tok.vocab_size,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.hf.save(str(folder / "tokenizer.json"))
    return folder


def _load_pretrained(at, name: str) -> None:
    at.sidebar.selectbox(key="model_choice").set_value("pretrained").run()
    at.sidebar.text_input(key="pretrained_name").set_value(name).run()
    at.sidebar.button(key="pretrained_btn_load").click().run()


def test_gpt2_shaped_model_works_on_every_page_quickly(env, gpt2_folder):
    at = app()
    _load_pretrained(at, str(gpt2_folder))
    no_problem(at)
    assert any("12 layers · 12 heads" in c.value for c in at.sidebar.caption)
    timings = {}
    for page in ALL_PAGES:
        t0 = time.perf_counter()
        at.switch_page(page).run()
        if page == "views/generate.py":
            at.button(key="gen_btn_next").click().run()
        timings[page] = time.perf_counter() - t0
        no_problem(at)
        assert charts(at) or page == "views/train.py", page
    c = charts(at)  # Mechanics: one layer's matrices at width 48
    assert c["mech_q"]["data"][0]["z"]["dtype"] == "f4"
    at.switch_page("views/attention.py").run()
    c = charts(at)
    assert len(c["attn_grid"]["data"]) == 12  # one layer at a time: its 12 heads
    assert all(t["z"]["dtype"] == "f4" for t in c["attn_grid"]["data"])
    at.session_state["attn_tab"] = "One query token, every head"
    at.run()
    assert len(charts(at)["attn_query_all"]["data"][0]["y"]) == 144
    print("GPT-2-shaped page timings (s):", {k.split("/")[1]: round(v, 2) for k, v in timings.items()})
    assert max(timings.values()) < 15, timings


def test_pretrained_problems_are_messages(env, tmp_path, monkeypatch):
    at = app()
    _load_pretrained(at, str(tmp_path / "nowhere"))
    assert not at.exception
    assert any("does not exist" in e.value for e in at.sidebar.error)
    assert charts(at)  # the default model stands in
    monkeypatch.setitem(sys.modules, "transformers", None)  # transformers not installed
    at.sidebar.text_input(key="pretrained_name").set_value("gpt2").run()
    at.sidebar.button(key="pretrained_btn_load").click().run()
    assert not at.exception
    assert any("pip install transformers" in e.value for e in at.sidebar.error)


def test_recorded_head_scores_drive_the_circuits_panel_and_the_bump(env, monkeypatch):
    """The trainer's record (TrainSnapshot.head_scores, long format) is what the panel shows, and
    the loss curve marks the step where an induction head formed."""
    from app import resources
    from app.core import circuits
    from app.core.models import HEAD_SCORE_COLUMNS, recorded_head_scores
    from app.core.jobs import TrainingJob

    assert list(recorded_head_scores(object()).columns) == HEAD_SCORE_COLUMNS  # nothing recorded: empty
    steps = [0, 10, 20, 30]
    per = [(s, {"induction": np.array([[0.02, 0.05], [0.1, 0.15 * i]], dtype=np.float32),
                "previous_token": np.full((2, 2), 0.1 * i, dtype=np.float32)}) for i, s in enumerate(steps)]
    recorded = circuits.long_frame(per)
    poll = TrainingJob.poll

    def poll_with_scores(self, weights=False):
        snap = poll(self, weights)
        snap.head_scores = recorded  # what lm_core's trainer records at each evaluation
        return snap

    monkeypatch.setattr(TrainingJob, "poll", poll_with_scores)
    at = app()
    at.switch_page("views/train.py").run()
    from test_app import _tiny_settings

    _tiny_settings(at)
    at.button(key="train_btn_start").click().run()
    job = resources.registry().active_job()
    try:
        assert _wait_for(lambda: len(job.history()) >= 1)
        at.run()
        no_problem(at)
        c = charts(at)
        heat = c["train_circuits_heat"]["data"][0]
        assert list(_z(c["train_circuits_heat"], field="x")) == [0, 10, 20, 30] and heat["y"] == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]
        np.testing.assert_allclose(_z(c["train_circuits_heat"])[3], [0.0, 0.15, 0.3, 0.45], atol=1e-6)
        loss = c["train_loss_chart"]["layout"]
        assert loss["shapes"][0]["x0"] == 30 and "L1 H1" in loss["annotations"][0]["text"]  # 0.45 ≥ 0.4 at step 30
        assert any("recorded at each evaluation" in cap.value for cap in at.caption)
        at.radio(key="circuit_kind").set_value("previous_token").run()
        assert "previous token" in charts(at)["train_circuits_heat"]["layout"]["title"]["text"].lower()
    finally:
        job.stop()
        job.wait(60)


def test_circuits_never_lose_a_column_when_the_record_starts_late(tiny_run):
    """Live, the panel once switched from a run's weight snapshots to its first recorded
    evaluation and dropped to one column: the steps the record lacks are kept, from snapshots."""
    from app.core import circuits
    from app.widgets.history import head_score_history
    run = tiny_run
    snaps = lm_runs.list_snapshot_steps(run)
    assert len(snaps) >= 3
    full = lm_runs.load_run(run).head_scores
    late = full[full["step"] == full["step"].max()]  # a record that starts late: one evaluation
    from types import SimpleNamespace

    scores, source = head_score_history(SimpleNamespace(head_scores=late), run)  # as TrainSnapshot carries it
    assert set(scores["step"]) == {s for s in snaps if s < full["step"].max()} | set(late["step"])
    assert "recorded" in source and "snapshots" in source
    z, steps, heads = circuits.matrix(scores, "induction")
    assert z.shape[1] == len(steps) >= 3
    only_record, src = head_score_history(SimpleNamespace(head_scores=full), run)  # a record that covers every snapshot: used as is
    assert set(only_record["step"]) == set(full["step"]) and src == "recorded at each evaluation"
