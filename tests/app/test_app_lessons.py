"""The article's lessons in the app, under AppTest: the n-gram baselines on the loss chart, the
bigram beside the transformer on Generate, the Surprise page's numbers (equal to
``lm_core.surprise``), and the over-fitting demonstration's buttons and chart.

The shared fixtures (``env``, ``default_model_dir``) and helpers come from ``test_app.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lm_core import runs as lm_runs
from lm_core.corpora import load_corpus
from lm_core.data import split_text
from lm_core.ngram import fit_ngrams
from lm_core.presets import PRESETS
from lm_core.recipes import build_trainer
from lm_core.surprise import compare_surprise

from app.core import lessons
from test_app import _wait_for, app, charts, env, no_problem  # noqa: F401  (fixtures)
from test_app_beyond import _z


def _bigram_of(run_dir: Path):
    """The bigram as the app fits it: the train split of the run's corpus, in its tokenizer's ids."""
    run = lm_runs.load_run(run_dir)
    train, _ = split_text(load_corpus(run.config.corpus), run.tokenizer, 1)
    return run, fit_ngrams(train.ids, run.tokenizer.vocab_size, max_n=2)


def _small_run(path: Path, preset: str | None = None, steps: int = 40) -> Path:
    """A real run folder built by the one recipe (so it has baselines.json), trained briefly."""
    over = dict(max_steps=steps, eval_interval=10, eval_iters=2, log_interval=5, warmup_steps=2, sample_tokens=0,
                num_threads=1)
    if preset is None:
        tr = build_trainer("builtin:python-docs?chars=20000", "char", run_dir=path, train_overrides=over,
                           model_overrides=dict(n_layer=1, n_head=2, n_embd=32, block_size=32))
    else:
        tr = build_trainer(preset=preset, run_dir=path, train_overrides=over)
    tr.run()
    return path


def test_loss_chart_of_a_run_with_baselines_draws_them_and_the_best_step(env):
    run_dir = _small_run(env / "with-baselines")
    baselines = lm_runs.read_baselines(run_dir)
    assert [b["name"] for b in baselines] == ["unigram", "bigram Markov chain", "trigram", "4-gram"]
    at = app()
    at.sidebar.selectbox(key="model_choice").set_value(f"run:{run_dir.resolve()}").run()
    at.switch_page("views/train.py").run()
    no_problem(at)
    fig = charts(at)["saved_loss_chart"]
    for b in baselines:
        line = next(t for t in fig["data"] if t.get("name", "").startswith(b["name"] + " ("))
        assert np.allclose(_z(fig, fig["data"].index(line), "y"), b["val_loss"], atol=1e-5)
    hist = lm_runs.read_history(run_dir / lm_runs.HISTORY_FILE).dropna(subset=["val_loss"])
    best = int(hist["step"].iloc[int(hist["val_loss"].to_numpy().argmin())])
    texts = [a["text"] for a in fig["layout"].get("annotations", [])]
    assert any(f"val best (step {best:,})" in t for t in texts), texts
    assert any("n-gram models" in c.value for c in at.caption)


def test_surprise_page_shows_lm_core_numbers(env, default_model_dir):
    text = "def add(a, b):\n    return a + b\n"
    at = app()
    at.switch_page("views/surprise.py").run()
    at.text_area(key="inspect_text").set_value(text).run()
    no_problem(at)
    run, ngrams = _bigram_of(default_model_dir)
    want = compare_surprise(run.model, run.tokenizer, text, ngrams, n=2)
    shown = [m.value for m in at.metric]
    for s in (want.model, want.baseline):
        assert f"{s.total_nats:,.1f}" in shown and f"{s.mean_nats:.3f}" in shown
        assert f"{s.bits_per_char:.3f}" in shown
    c = charts(at)
    for key, s in (("surprise_model", want.model), ("surprise_bigram", want.baseline)):
        z = _z(c[key]).reshape(-1)[: len(s.ids)]
        assert np.isnan(z[0]) and np.allclose(z[1:], s.losses, atol=1e-4), key
    assert np.allclose(_z(c["surprise_compare"], 2, "y"), want.gain, atol=1e-4)  # the difference bars


def test_generate_bigram_chart_equals_next_token_probs(env, default_model_dir):
    at = app()
    at.switch_page("views/generate.py").run()
    at.button(key="gen_btn_next").click().run()
    assert "gen_bigram" not in charts(at)  # closed by default: one chart fewer to draw at every token
    at.session_state["gen_bigram_open"] = True  # the person opens the panel
    at.button(key="gen_btn_next").click().run()
    no_problem(at)
    trace = at.session_state["gen_trace"]
    rec = trace.steps[-1]
    run, ngrams = _bigram_of(default_model_dir)
    p = ngrams.next_token_probs(trace.ids[rec.context_start:rec.position], 2)
    model_p = {int(i): float(q) for i, q in zip(rec.top_ids, rec.top_before)}
    ids = lessons.top_union(np.array([model_p.get(i, 0.0) for i in range(len(p))]), p, k=min(8, len(rec.top_ids)))
    fig = charts(at)["gen_bigram"]
    assert fig["data"][0]["name"] == "bigram Markov chain"
    assert np.allclose(_z(fig, 0, "x"), p[ids], atol=1e-6)
    assert math.isclose(float(_z(fig, 0, "x")[0]), float(p.max()), rel_tol=1e-6)  # its most likely token first
    shown_model = _z(fig, 1, "x")
    assert np.allclose(shown_model, [model_p.get(i, 0.0) for i in ids], atol=1e-6)


def test_overfit_demo_buttons_and_overlay(env):
    at = app()
    at.switch_page("views/train.py").run()
    no_problem(at)
    assert at.button(key="train_btn_overfit_cured").disabled  # nothing to cure yet
    assert "train_overfit_chart" not in charts(at)
    # a finished (short) run of the demo's first preset, named as the button names it
    _small_run(env / "overfit-20260101-000000", preset="overfit", steps=30)
    at.run()
    no_problem(at)
    assert not at.button(key="train_btn_overfit_cured").disabled
    fig = charts(at)["train_overfit_chart"]
    names = [t.get("name", "") for t in fig["data"]]
    assert any(n.endswith(": train") for n in names) and any(n.endswith(": val") for n in names)
    assert any("val stopped improving" in n for n in names)
    # the cured button starts the cured preset (dropout, early stopping) in a folder named after it
    from app import resources

    at.button(key="train_btn_overfit_cured").click().run()
    no_problem(at)
    job = resources.registry().active_job()
    try:
        assert job is not None and job.run_id.startswith("overfit-cured-")
        want = PRESETS["overfit-cured"]
        assert job.model_config.dropout == want.model["dropout"]
        assert job.train_config.early_stopping_patience == want.train["early_stopping_patience"]
        assert lm_runs.load_run_config(job.run_dir).corpus == want.corpus
        assert at.session_state["train_patience"] == want.train["early_stopping_patience"]
    finally:
        if job is not None:
            job.stop()
            job.wait(60)


def test_run_marks_best_and_stop():
    import pandas as pd

    h = pd.DataFrame({"step": [0, 10, 20, 30, 40], "val_loss": [3.0, 2.0, np.nan, 2.5, 2.7]})
    m = lessons.run_marks(h, "early_stopping")
    assert (m.best_step, m.best_val, m.stopped_step) == (10, 2.0, 40)
    assert m.chart_marks() == [(10.0, "val best (step 10)"), (40.0, "stopped: early stopping")]
    assert lessons.run_marks(h, None).chart_marks() == [(10.0, "val best (step 10)")]  # still training
    assert lessons.demo_preset_of("overfit-cured-20260101-000000") == "overfit-cured"
    assert lessons.demo_preset_of("overfit-20260101-000000") == "overfit"
    assert lessons.demo_preset_of("tiny-shakespeare-20260101") is None
