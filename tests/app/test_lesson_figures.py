"""Lesson figures: the right traces and labels, marks in the right places, float32 payloads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app import lesson_figures as L

BASELINES = [{"n": 1, "name": "unigram", "val_loss": 3.3}, {"n": 2, "name": "bigram Markov chain", "val_loss": 2.5},
             {"n": 3, "name": "trigram", "val_loss": 2.0}, {"n": 4, "name": "4-gram", "val_loss": 1.7}]


def _history(steps=(0, 100, 200, 300, 400), val=(4.2, 3.0, 2.4, 2.1, 2.2)):
    df = pd.DataFrame({"step": list(range(0, max(steps) + 1, 10))})
    df["train_loss"] = np.linspace(4.2, 1.8, len(df))
    df["val_loss"] = np.nan
    for s, v in zip(steps, val):
        df.loc[df["step"] == s, "val_loss"] = v
    return df


def _is_f32(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype == np.float32


def _by_name(fig: go.Figure) -> dict[str, go.BaseTraceType]:
    return {t.name: t for t in fig.data}


def test_loss_with_baselines_draws_a_labelled_line_per_baseline_and_marks_where_each_is_passed():
    fig = L.loss_with_baselines(_history(), BASELINES)
    names = _by_name(fig)
    assert {"train loss", "val loss"} <= set(names)
    for b in BASELINES:
        line = names[f"{b['name']} ({b['val_loss']:.3f})"]
        assert _is_f32(line.y) and np.allclose(line.y, b["val_loss"])
        assert list(line.x) == [0.0, 400.0]
        assert b["name"] in line.text          # the label drawn on the chart
    passes = names["transformer passes"]
    # val 3.0 at step 100 passes unigram (3.3), 2.4 at 200 passes the bigram (2.5); never trigram
    assert list(passes.x) == [100.0, 200.0] and _is_f32(passes.x) and _is_f32(passes.y)
    assert np.allclose(passes.y, [3.3, 2.5])
    assert passes.text == ("passes the unigram at step 100", "passes the bigram Markov chain at step 200")
    json.loads(fig.to_json())


def test_loss_with_baselines_uses_given_passes_and_survives_an_empty_history():
    fig = L.loss_with_baselines(_history(), BASELINES[:2], passed_at={"unigram": 300, "bigram Markov chain": None})
    assert list(_by_name(fig)["transformer passes"].x) == [300.0]
    empty = L.loss_with_baselines(pd.DataFrame(columns=["step", "train_loss", "val_loss"]), BASELINES)
    assert "transformer passes" not in _by_name(empty)
    assert len([t for t in empty.data if "gram" in t.name]) == 4
    assert L.loss_with_baselines(None, BASELINES[:1]).data


def test_surprise_strip_colours_each_token_by_its_loss_with_alternatives_on_hover():
    pieces = list("to be or not")
    losses = np.linspace(0.1, 3.0, len(pieces) - 1)
    alts = [[("e", 0.5), ("o", 0.2)]] * (len(pieces) - 1)
    fig = L.surprise_strip(pieces, losses, alts, title="transformer", per_row=5)
    (hm,) = fig.data
    z = np.asarray(hm.z)
    assert z.shape == (3, 5) and z.dtype == np.float32
    assert np.isnan(z[0, 0])                              # the first token is never predicted
    np.testing.assert_allclose(z.reshape(-1)[1:len(pieces)], losses.astype(np.float32))
    assert np.isnan(z.reshape(-1)[len(pieces):]).all()    # padding
    assert hm.text[0][2] == "␣"                           # whitespace made visible
    hover = hm.customdata
    assert "first token" in hover[0][0]
    assert "expected: e 0.50 · o 0.20" in hover[0][1] and "loss 0.10 nats" in hover[0][1]
    assert hm.zmin == 0 and hm.zmax == pytest.approx(3.0)
    assert L.surprise_strip(pieces, losses, zmax=5.0).data[0].zmax == 5.0
    json.loads(fig.to_json())
    with pytest.raises(ValueError, match="losses has"):
        L.surprise_strip(pieces, losses[:3])


def test_surprise_comparison_shows_both_models_and_the_difference():
    pieces = ["a", "b", "c", "a"]
    m, b = np.array([1.0, 0.5, 0.2]), np.array([1.5, 0.4, 2.0])
    fig = L.surprise_comparison(pieces, m, b)
    names = _by_name(fig)
    assert _is_f32(names["transformer"].y) and _is_f32(names["bigram Markov chain"].y)
    assert list(names["transformer"].x) == ["1·b", "2·c", "3·a"]
    diff = names["difference"]
    assert _is_f32(diff.y) and np.allclose(diff.y, b - m)
    assert diff.marker.color[0] == L.ACCENT and diff.marker.color[1] != L.ACCENT
    json.loads(fig.to_json())
    with pytest.raises(ValueError, match="expected 3 losses"):
        L.surprise_comparison(pieces, m[:2], b)


def test_overfit_curves_overlays_runs_with_best_and_stop_marks():
    big = _history(val=(4.0, 2.5, 2.2, 2.6, 3.0))               # parts after step 200
    cured = _history(steps=(0, 100, 200, 300), val=(4.0, 2.6, 2.3, 2.25))
    cured = cured[cured["step"] <= 300]
    fig = L.overfit_curves([{"name": "no dropout", "history": big},
                            {"name": "dropout + early stopping", "history": cured, "best_step": 300,
                             "stopped_step": 300}])
    names = _by_name(fig)
    for run in ("no dropout", "dropout + early stopping"):
        assert _is_f32(names[f"{run}: train"].y) and _is_f32(names[f"{run}: val"].y)
    star = names["no dropout: val stopped improving (step 200)"]
    assert list(star.x) == [200.0] and np.allclose(star.y, 2.2) and star.marker.symbol == "star"
    stop = names["no dropout: stopped (step 400)"]
    assert list(stop.x) == [400.0] and stop.marker.symbol == "x"
    assert "dropout + early stopping: stopped (step 300)" in names
    assert names["no dropout: train"].line.color != names["dropout + early stopping: train"].line.color
    json.loads(fig.to_json())
    # a mapping works too
    assert len(L.overfit_curves({"a": big}).data) == 4
    with pytest.raises(ValueError, match="'name' and 'history'"):
        L.overfit_curves([{"history": big}])
