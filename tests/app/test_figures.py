"""Figure builders, without Streamlit: shapes, labels, unique categories, float32 payloads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app import figures as F


def _causal(T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(T, T))
    s[np.triu_indices(T, 1)] = -np.inf
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _history(n: int = 50, groups=("embed", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", "ln_final")):
    steps = np.arange(1, n + 1) * 10
    df = pd.DataFrame({"step": steps, "train_loss": np.linspace(4, 2, n), "val_loss": np.nan,
                       "train_bpc": np.linspace(6, 3, n), "val_bpc": np.nan,
                       "tokens_per_s": np.full(n, 5000.0)})
    df.loc[df.index % 10 == 9, "val_loss"] = 2.5
    df.loc[df.index % 10 == 9, "val_bpc"] = 3.5
    for i, g in enumerate(reversed(groups)):  # columns deliberately out of order
        df[f"grad_norm/{g}"] = 0.1 * (i + 1)
        df[f"update_ratio/{g}"] = 1e-3 * (i + 1)
    return df


def _is_f32(arr) -> bool:
    return isinstance(arr, np.ndarray) and arr.dtype == np.float32


# -- labels and scales ---------------------------------------------------------------------------


def test_token_labels_are_unique_for_repeated_tokens_and_show_whitespace():
    pieces = ["a", " ", "a", "\n", "a", "␣"]
    labels = F.token_labels(pieces)
    assert labels == ["0·a", "1·␣", "2·a", "3·↵", "4·a", "5·␣"]
    assert len(set(labels)) == len(labels)
    assert F.token_labels(["x", "x"], start=7) == ["7·x", "8·x"]


def test_candidate_labels_unique_even_when_pieces_collide():
    labels = F.candidate_labels(["⟨unk⟩", "⟨unk⟩", "e"])
    assert labels == ["#1 ⟨unk⟩", "#2 ⟨unk⟩", "#3 e"]


def test_one_colour_scale_per_kind_and_unknown_kind_is_refused():
    for kind in ("weight", "signed", "score"):
        scale = F.colorscale(kind)
        assert scale[0][0] == 0.0 and scale[-1][0] == 1.0
    with pytest.raises(ValueError, match="unknown colour scale"):
        F.colorscale("rainbow")


def test_as_f32_accepts_torch_and_lists():
    torch = pytest.importorskip("torch")
    assert _is_f32(F.as_f32(torch.ones(2, 3, dtype=torch.float64)))
    assert _is_f32(F.as_f32([[1, 2], [3, 4]]))


# -- attention -------------------------------------------------------------------------------------


def test_attention_heatmap_axes_hover_and_float32():
    T = 6
    pattern = _causal(T)
    labels = F.token_labels(list("abcabc"))
    fig = F.attention_heatmap(pattern, labels, title="L0 H1")
    (hm,) = fig.data
    assert isinstance(hm, go.Heatmap)
    assert _is_f32(hm.z) and hm.z.shape == (T, T)
    assert list(hm.x) == labels and list(hm.y) == labels
    assert len(set(hm.x)) == T  # repeated tokens do not collapse
    assert "query" in hm.hovertemplate and "key" in hm.hovertemplate and "weight" in hm.hovertemplate
    assert (hm.zmin, hm.zmax) == (0.0, 1.0)
    assert fig.layout.yaxis.autorange == "reversed"  # the first query at the top
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.type == "category"
    # payload is a typed array, not a list of float64
    assert '"dtype":"f4"' in fig.to_json().replace(" ", "")


def test_attention_heatmap_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="key labels"):
        F.attention_heatmap(_causal(4), ["a", "b"])


def test_attention_grid_one_panel_per_head_shared_colour_axis():
    H, T = 4, 5
    pats = np.stack([_causal(T, s) for s in range(H)])
    fig = F.attention_grid(pats, F.token_labels(list("hello")), layer=2, selected_head=1)
    assert len(fig.data) == H
    assert all(tr.coloraxis == "coloraxis" and _is_f32(tr.z) and tr.z.shape == (T, T) for tr in fig.data)
    assert fig.layout.coloraxis.cmin == 0.0 and fig.layout.coloraxis.cmax == 1.0
    titles = [a.text for a in fig.layout.annotations]
    assert "<b>head 1</b>" in titles and "head 0" in titles
    assert "L2 H3" in fig.data[3].hovertemplate


def test_head_score_overview_has_a_clickable_point_per_cell():
    L, H = 3, 4
    scores = np.arange(L * H, dtype=np.float64).reshape(L, H) / 12
    fig = F.head_score_overview(scores, "induction", selected=(1, 2), zrange=(0, 1))
    hm, sc = fig.data
    assert _is_f32(hm.z) and hm.z.shape == (L, H)
    assert isinstance(sc, go.Scatter) and len(sc.x) == L * H
    cells = {tuple(int(v) for v in cd) for cd in sc.customdata}
    assert cells == {(l, h) for l in range(L) for h in range(H)}
    # the point for (layer, head) sits at x=head, y=layer
    for x, y, cd in zip(sc.x, sc.y, sc.customdata):
        assert (int(y), int(x)) == (int(cd[0]), int(cd[1]))
    assert fig.layout.clickmode == "event+select"
    assert len(fig.layout.shapes) == 1  # the selected cell is outlined
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]  # layer 0 at the top


def test_query_attention_rows_are_layer_head_pairs():
    L, H, T = 2, 3, 4
    rows = np.random.default_rng(0).random((L, H, T))
    fig = F.query_attention(rows, F.token_labels(list("abab")), "3·b", L, H)
    (hm,) = fig.data
    assert hm.z.shape == (L * H, T) and _is_f32(hm.z)
    assert list(hm.y) == [f"L{l} H{h}" for l in range(L) for h in range(H)]
    assert np.allclose(hm.z[4], rows[1, 1])
    with pytest.raises(ValueError):
        F.query_attention(rows, ["a"], "x", L, H)


# -- training --------------------------------------------------------------------------------------


def test_downsample_history_bounds_points_and_keeps_val_and_last_rows():
    n = 10_000
    df = pd.DataFrame({"step": np.arange(n), "train_loss": np.ones(n), "val_loss": np.nan})
    df.loc[df.index % 500 == 7, "val_loss"] = 1.0
    out = F.downsample_history(df, max_points=1000)
    assert len(out) <= 1000 + df["val_loss"].notna().sum() + 1
    assert out["step"].iloc[-1] == n - 1
    assert out["val_loss"].notna().sum() == df["val_loss"].notna().sum()
    small = df.iloc[:50]
    assert F.downsample_history(small, 1000) is small
    assert len(F.downsample_history(None)) == 0


def test_loss_curves_val_points_marked_and_log_option():
    h = _history()
    fig = F.loss_curves(h)
    train, val = fig.data
    assert train.mode == "lines" and "markers" in val.mode
    assert len(val.x) == h["val_loss"].notna().sum()
    assert fig.layout.yaxis.type == "linear"
    assert F.loss_curves(h, log_y=True).layout.yaxis.type == "log"
    assert len(F.loss_curves(pd.DataFrame(columns=["step", "train_loss", "val_loss"])).data) == 2


def test_throughput_chart_has_speed_and_bpc():
    fig = F.throughput_chart(_history())
    names = [t.name for t in fig.data]
    assert names == ["tokens/s", "train bpc", "val bpc"]


def test_grad_norm_heatmap_groups_in_model_order():
    h = _history()
    fig = F.grad_norm_heatmap(h)
    (hm,) = fig.data
    assert list(hm.y) == ["embed", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", "ln_final"]
    assert hm.z.shape == (6, len(h)) and _is_f32(hm.z)
    empty = F.grad_norm_heatmap(h[["step", "train_loss"]])
    assert len(empty.data) == 0 and "no gradient norms" in empty.layout.annotations[0].text


def test_update_ratio_chart_one_line_per_group_log_scale():
    fig = F.update_ratio_chart(_history())
    assert len(fig.data) == 6 and fig.layout.yaxis.type == "log"
    assert [t.name for t in fig.data][0] == "embed"


# -- generation ------------------------------------------------------------------------------------


def test_candidates_bar_before_after_and_drawn_highlight():
    fig = F.candidates_bar(["e", "a", "e"], [0.5, 0.3, 0.1], [0.6, 0.4, 0.0], drawn=1)
    before, after = fig.data[:2]
    assert list(before.y) == ["#1 e", "#2 a", "#3 e"] and len(set(before.y)) == 3
    assert _is_f32(before.x) and _is_f32(after.x)
    assert after.marker.color[1] == F.ACCENT and after.marker.color[0] != F.ACCENT
    assert list(after.customdata) == [0, 1, 2]
    assert fig.layout.clickmode == "event+select"


@pytest.mark.parametrize("drawn", [0, 1, 2, None])
def test_candidates_legend_matches_the_caption_whatever_rank_was_drawn(drawn):
    """Caption: grey = model, blue = sampled from, orange = the drawn token."""
    fig = F.candidates_bar(["e", "a", "x"], [0.5, 0.3, 0.1], [0.6, 0.4, 0.0], drawn=drawn)
    legend = {}
    for t in fig.data:
        if t.showlegend is not False:
            c = t.marker.color
            assert isinstance(c, str), f"legend entry {t.name!r} has per-point colours {c}"
            legend[t.name] = c
    assert legend == {"model (T = 1)": F.MUTED, "sampled from (after T, top-k, top-p)": F.PRIMARY,
                      **({"drawn token": F.ACCENT} if drawn is not None else {})}


def test_growing_attention_places_rows_at_their_context_window():
    rows = [np.array([0.5, 0.5]), np.array([0.2, 0.3, 0.5]), np.array([1.0, 0.0, 0.0])]
    starts = [0, 0, 1]
    labels = F.token_labels(list("abcd"))
    fig = F.growing_attention(rows, starts, labels, ["step 1: c", "step 2: d", "step 3: e"], "L0 H0")
    z = fig.data[0].z
    assert z.shape == (3, 4) and _is_f32(z)
    assert np.isnan(z[0, 2:]).all() and np.allclose(z[0, :2], 0.5)
    assert np.isnan(z[2, 0]) and z[2, 1] == 1.0
    with pytest.raises(ValueError):
        F.growing_attention(rows, starts[:2], labels, ["a"], "h")


def test_prob_entropy_chart_two_axes():
    fig = F.prob_entropy_chart(["1·a", "2·b"], [0.5, 0.9], [2.0, 0.3], current=1)
    assert len(fig.data) == 2 and fig.data[1].yaxis == "y2"


# -- embeddings and mechanics ----------------------------------------------------------------------


def test_embedding_scatter_2d_and_3d_label_every_point():
    pieces = [chr(97 + i) for i in range(10)] + [" "]
    c3 = np.random.default_rng(0).normal(size=(11, 3))
    f2 = F.embedding_scatter(c3[:, :2], pieces, "2d", highlight=[0])
    assert isinstance(f2.data[0], go.Scatter) and list(f2.data[0].text)[-1] == "␣"
    assert "text" in f2.data[0].mode and f2.data[0].marker.color[0] == F.ACCENT
    f3 = F.embedding_scatter(c3, pieces, "3d")
    assert isinstance(f3.data[0], go.Scatter3d) and len(f3.data[0].x) == 11
    with pytest.raises(ValueError):
        F.embedding_scatter(np.zeros((3, 4)), ["a", "b", "c"], "bad")


def test_neighbours_similarity_residual_matrix_and_bars():
    nb = F.neighbours_bar(["a", "a"], [0.9, 0.8], "near")
    assert list(nb.data[0].y) == ["#1 a", "#2 a"]
    sim = F.similarity_heatmap(np.eye(5), "pos")
    assert sim.data[0].zmin == -1 and sim.data[0].zmax == 1 and sim.data[0].z.shape == (5, 5)
    rn = F.residual_norms(np.ones((3, 4)), ["embeddings", "after block 0", "after block 1"], F.token_labels("abab"))
    assert rn.data[0].z.shape == (3, 4) and len(set(rn.data[0].x)) == 4
    masked = np.array([[1.0, -np.inf], [0.5, -2.0]])
    mh = F.matrix_heatmap(masked, ["0·a", "1·b"], ["0·a", "1·b"], "scores")
    assert np.isnan(mh.data[0].z[0, 1]) and mh.data[0].zmin == -2.0 and mh.data[0].zmax == 2.0
    with pytest.raises(ValueError):
        F.matrix_heatmap(np.zeros((2, 3)), ["a"], ["x"], "bad")
    vb = F.vector_bar([0.1, 0.9], ["#1 a", "#2 b"], "p", highlight=1)
    assert vb.data[0].marker.color[1] == F.ACCENT
    gb = F.group_bar(["embed", "ln_final"], [1e-3, 2e-3], "ratio", "r", log_y=True, reference=1e-3)
    assert gb.layout.yaxis.type == "log" and len(gb.layout.shapes) == 1


def test_every_builder_returns_serialisable_figure():
    figs = [
        F.attention_heatmap(_causal(3), ["0·a", "1·b", "2·c"]),
        F.loss_curves(_history()),
        F.grad_norm_heatmap(_history()),
        F.candidates_bar(["a"], [1.0], [1.0], 0),
    ]
    for f in figs:
        json.loads(f.to_json())


# -- circuits, logit lens, ablation, compare -----------------------------------------------------------


def _heads(L: int, H: int):
    return [(l, h) for l in range(L) for h in range(H)]


def test_head_scores_over_time_rows_are_heads_columns_steps():
    z = np.random.default_rng(0).random((6, 4))
    fig = F.head_scores_over_time(z, [0, 10, 20, 30], _heads(3, 2), "induction", marks=[20])
    (hm,) = fig.data
    assert _is_f32(hm.z) and hm.z.shape == (6, 4)
    assert list(hm.y) == ["L0 H0", "L0 H1", "L1 H0", "L1 H1", "L2 H0", "L2 H1"]
    assert list(hm.x) == [0, 10, 20, 30] and (hm.zmin, hm.zmax) == (0.0, 1.0)
    assert fig.layout.yaxis.autorange == "reversed" and len(fig.layout.shapes) == 1
    assert F.head_scores_over_time(z, [0, 10, 20, 30], _heads(3, 2), "entropy", zrange=None).data[0].zmax is None
    with pytest.raises(ValueError, match="heads"):
        F.head_scores_over_time(z, [0, 10], _heads(3, 2), "induction")


@pytest.mark.parametrize("build", [F.head_scores_over_time, F.head_score_lines])
def test_circuits_step_axis_is_numeric_and_spans_the_data_with_the_mark_inside(build):
    """A marker at step 2200 once turned the category axis into [-0.5, 2204]: one column."""
    steps = list(range(0, 4001, 250))
    z = np.random.default_rng(2).random((4, len(steps)))
    fig = build(z, steps, _heads(2, 2), "induction", marks=[2200])
    ax = fig.layout.xaxis
    assert ax.type == "linear" and ax.autorange is False
    lo, hi = ax.range
    assert lo < 0 < 4000 < hi and hi - lo <= 4000 + 250 + 1e-9  # the data, half a column either side
    assert fig.layout.shapes[0].x0 == 2200 and lo < 2200 < hi
    # one recorded evaluation (live, early): a real column with a whole-number tick
    one = build(z[:, :1], [250], _heads(2, 2), "induction")
    lo, hi = one.layout.xaxis.range
    assert lo < 250 < hi and list(one.layout.xaxis.tickvals) == [250.0] and list(one.layout.xaxis.ticktext) == ["250"]
    # a mark outside the recorded steps widens the axis instead of hiding it
    far = build(z[:, :3], [0, 250, 500], _heads(2, 2), "induction", marks=[2200])
    assert far.layout.xaxis.range[1] > 2200


def test_head_score_lines_one_per_head_coloured_by_layer_and_highlight():
    z = np.random.default_rng(1).random((4, 5))
    fig = F.head_score_lines(z, [0, 1, 2, 3, 4], _heads(2, 2), "induction", highlight=(1, 0), marks=[3])
    assert [t.name for t in fig.data] == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color
    assert fig.data[2].line.width > fig.data[3].line.width
    assert all(_is_f32(t.y) for t in fig.data) and len(fig.layout.shapes) == 1


def test_loss_curves_marks_a_step():
    fig = F.loss_curves(_history(), marks=[(200, "induction head forms (L1 H2)")])
    assert fig.layout.shapes[0].x0 == 200 and fig.layout.shapes[0].line.dash == "dash"
    assert "L1 H2" in fig.layout.annotations[0].text
    assert not F.loss_curves(_history()).layout.shapes


def test_logit_lens_heatmap_writes_top_tokens_and_colours_probability():
    R, T = 3, 4
    p = np.random.default_rng(2).random((R, T))
    pieces = [["a", " ", "\n", "b"]] * R
    hover = [[f"r{r}t{t}" for t in range(T)] for r in range(R)]
    fig = F.logit_lens_heatmap(p, pieces, ["embeddings", "after block 0", "after block 1"],
                               F.token_labels(list("abab")), hover=hover)
    (hm,) = fig.data
    assert _is_f32(hm.z) and hm.z.shape == (R, T) and (hm.zmin, hm.zmax) == (0.0, 1.0)
    assert list(hm.text[0]) == ["a", "␣", "↵", "b"]  # whitespace made visible
    assert hm.texttemplate == "%{text}" and hm.customdata[2][3] == "r2t3"
    assert list(hm.y)[0] == "embeddings" and fig.layout.yaxis.autorange == "reversed"
    with pytest.raises(ValueError):
        F.logit_lens_heatmap(p, pieces, ["x"], F.token_labels(list("abab")))


def test_true_next_heatmap_linear_and_log():
    p = np.array([[0.5, 1e-8], [0.9, 0.01]])
    labels, nxt = ["0·a", "1·b"], ["b", " "]
    lin = F.true_next_heatmap(p, ["embeddings", "after block 0"], labels, nxt)
    assert _is_f32(lin.data[0].z) and lin.data[0].zmax == 1.0
    assert lin.data[0].customdata[0][1] == "␣"
    log = F.true_next_heatmap(p, ["embeddings", "after block 0"], labels, nxt, log=True)
    assert log.data[0].zmin == -6.0 and log.data[0].z[0, 1] == pytest.approx(-6.0)  # clipped
    assert log.data[0].z[1, 0] == pytest.approx(np.log10(0.9), abs=1e-6)


def test_ablation_grid_marks_off_heads_and_cells_are_clickable():
    off = np.zeros((3, 4), dtype=bool)
    off[1, 2] = off[2, 0] = True
    effects = np.linspace(-0.5, 1.0, 12).reshape(3, 4)
    fig = F.ablation_grid(off, effects)
    hm, crosses, overlay = fig.data
    assert _is_f32(hm.z) and hm.zmin == -hm.zmax == -1.0  # signed, centred on 0
    assert sorted(zip(crosses.y, crosses.x)) == [(1, 2), (2, 0)]
    assert len(fig.layout.shapes) == 2 and fig.layout.clickmode == "event+select"
    cells = {tuple(cd) for cd in overlay.customdata}
    assert cells == {(l, h) for l in range(3) for h in range(4)}
    assert "off" in overlay.text[6] and "on" in overlay.text[0]  # (1, 2) is cell 6
    plain = F.ablation_grid(np.zeros((2, 2), dtype=bool))
    assert plain.data[0].showscale is False and len(plain.data[1].x) == 0
    with pytest.raises(ValueError):
        F.ablation_grid(off, np.zeros((2, 2)))


def test_before_after_bar_two_series_and_highlight():
    fig = F.before_after_bar(["#1 a", "#2 b"], [0.6, 0.3], [0.2, 0.7], "next", names=("A", "B"), highlight=1)
    before, after = fig.data
    assert (before.name, after.name) == ("A", "B") and _is_f32(before.x) and _is_f32(after.x)
    assert after.marker.color[1] == F.ACCENT and after.marker.color[0] == F.PRIMARY
    assert fig.layout.barmode == "group" and fig.layout.yaxis.autorange == "reversed"
    with pytest.raises(ValueError):
        F.before_after_bar(["a"], [0.1, 0.2], [0.1], "x")


def test_attention_difference_is_b_minus_a_with_the_future_blank():
    a, b = _causal(5, 0), _causal(5, 1)
    fig = F.attention_difference(a, b, F.token_labels(list("hello")), "B − A")
    z = fig.data[0].z
    assert _is_f32(z)
    low = np.tril_indices(5)
    np.testing.assert_allclose(z[low], (b - a)[low], atol=1e-6)
    assert np.isnan(z[np.triu_indices(5, 1)]).all()
    assert fig.data[0].zmin == -fig.data[0].zmax  # centred on 0
    np.testing.assert_allclose(np.nansum(z, axis=1), 0.0, atol=1e-5)  # rows of two distributions
    with pytest.raises(ValueError):
        F.attention_difference(a, b[:4, :4], F.token_labels(list("hello")), "x")


def test_head_scores_on_a_log_step_axis_keep_step_zero_and_read_the_steps():
    steps = [0, 1, 8, 1000, 143000]
    z = np.arange(2 * 5, dtype=np.float32).reshape(2, 5) / 10
    heat = F.head_scores_over_time(z, steps, [(0, 0), (0, 1)], "induction", marks=[1000], log_steps=True)
    assert heat.layout.xaxis.type == "log" and list(heat.layout.xaxis.ticktext) == ["0", "1", "8", "1,000", "143,000"]
    assert list(heat.data[0].x) == [1, 2, 9, 1001, 143001] and heat.layout.shapes[0].x0 == 1001
    assert np.asarray(heat.data[0].customdata)[0].tolist() == steps  # the hover reads the real step
    lines = F.head_score_lines(z, steps, [(0, 0), (0, 1)], "induction", log_steps=True)
    assert lines.layout.xaxis.type == "log" and list(lines.data[1].x) == [1, 2, 9, 1001, 143001]
    assert F.head_scores_over_time(z, steps, [(0, 0), (0, 1)], "induction").layout.xaxis.type == "linear"
    many = F.log_step_axis(list(range(0, 40)))
    assert len(many["tickvals"]) <= 12 and many["ticktext"][0] == "0" and many["ticktext"][-1] == "39"


def test_fit_margins_starts_where_the_labels_end_and_never_narrows():
    short = F.attention_heatmap(_causal(4), F.token_labels(list("abcd")), title="t")
    long = F.attention_heatmap(_causal(4), F.token_labels(["␣international", "b", "c", "d"]), title="t")
    for f in (short, long):
        F.fit_margins(f)
    ms, ml = short.layout.margin, long.layout.margin
    assert ml.l > ms.l > 10 and ms.b > 10 and ml.b >= ms.b  # longer labels, more room; never below the figure's
    # the colour bar sits at the plot's edge, so its room does not depend on the chart's width
    cb = long.data[0].colorbar
    assert (cb.x, cb.xanchor, cb.xpad) == (1.0, "left", 10) and ml.r > 40
    # a theme with larger axis titles needs more room; fitting again changes nothing
    themed = F.attention_heatmap(_causal(4), F.token_labels(list("abcd")), title="t")
    F.fit_margins(themed, {"title_size": 14, "standoff_x": 20, "standoff_y": 24, "colorbar_title_size": 14})
    assert themed.layout.margin.l > ms.l and themed.layout.margin.b > ms.b
    before = themed.layout.margin.to_plotly_json()
    F.fit_margins(themed)
    assert themed.layout.margin.to_plotly_json() == before
    # a legend placed by Plotly elsewhere keeps the bottom margin the figure set
    lines = F.prob_entropy_chart(["a", "b"], [0.5, 0.2], [1.0, 2.0])
    b0 = lines.layout.margin.b
    F.fit_margins(lines)
    assert lines.layout.margin.b == b0 and lines.layout.margin.l > 10
    # the candidates' legend at the figure's foot: one line per entry below the axis
    cand = F.candidates_bar(["a", "b"], [0.6, 0.3], [0.7, 0.2], 0)
    F.fit_margins(cand)
    assert cand.layout.margin.b >= 80 + 19 * 2


def test_plotly_key_paths_are_parsed_once_and_still_mean_the_same():
    import plotly.basedatatypes as bdt

    assert hasattr(bdt._str_to_dict_path_full, "cache_info")  # app.figures memoized it on import
    before = bdt._str_to_dict_path_full.cache_info().hits
    for _ in range(2):  # the second figure finds every path parsed
        fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4], error_y_array=[0.5, 0.25], marker_line_width=2))
        fig.update_layout(xaxis_title_text="step", yaxis_range=[0, 5], margin_l=7, legend_y=0.5)
    assert bdt._str_to_dict_path_full.cache_info().hits > before
    d = fig.to_dict()
    assert list(d["data"][0]["error_y"]["array"]) == [0.5, 0.25]
    assert d["data"][0]["marker"]["line"]["width"] == 2  # "error_y" is one property, not error -> y
    assert d["layout"]["xaxis"]["title"]["text"] == "step"
    assert list(d["layout"]["yaxis"]["range"]) == [0, 5] and d["layout"]["margin"]["l"] == 7
    assert d["layout"]["legend"]["y"] == 0.5
    with pytest.raises(ValueError):  # a wrong path is still refused, with Plotly's message
        fig.update_layout(xaxis_titel_text="x")


@pytest.mark.parametrize("n_head", [1, 4, 5, 6, 8, 12, 14, 16, 25, 32, 64])
def test_attention_grid_lays_out_any_head_count_inside_the_figure(n_head):
    # 8 heads (Pythia-70m), 14 (Qwen2.5-0.5B), 32 (TinyLlama): float rounding once put a row's
    # foot at -5.6e-17, and fixed gaps added up past the figure from 13 rows
    fig = F.attention_grid(np.random.default_rng(0).random((n_head, 5, 5)), list("abcde"), 0)
    lay = fig.to_dict()["layout"]
    axes = {k: v for k, v in lay.items() if k.startswith(("xaxis", "yaxis"))}
    assert len(axes) == 2 * n_head
    for ax in axes.values():
        lo, hi = ax["domain"]
        assert 0.0 <= lo < hi <= 1.0
    rows = {tuple(ax["domain"]) for k, ax in axes.items() if k.startswith("yaxis")}
    assert len(rows) == -(-n_head // 4)  # one band per row of four panels, none collapsed
    assert len(lay["annotations"]) == n_head


def test_per_press_figures_are_built_in_one_go():
    # the figures redrawn at every press carry their whole layout from the start (no update_* walk)
    rng = np.random.default_rng(1)
    labels = F.token_labels(list("abcdef"))
    heat = F.attention_heatmap(rng.random((6, 6)), labels, title="L0 H0")
    assert heat.layout.xaxis.title.text == "key (attended to)" and heat.layout.yaxis.autorange == "reversed"
    assert heat.layout.margin.t == 40 and heat.layout.title.text == "L0 H0" and heat.layout.height == 460
    bars = F.candidates_bar(["a", "b", "c"], np.array([.5, .3, .2]), np.array([.6, .3, .1]), 2)
    assert [t.type for t in bars.data] == ["bar", "bar", "scatter", "scatter"]
    assert bars.layout.margin.b == 80 and bars.layout.xaxis.title.text == "probability"
    assert list(bars.data[1].marker.color) == [F.PRIMARY, F.PRIMARY, F.ACCENT]
    over = F.head_score_overview(rng.random((2, 4)), "induction", selected=(1, 2), groups=[[0, 1], [2, 3]])
    assert len(over.layout.shapes) == 3 and [a.text for a in over.layout.annotations] == ["KV 0", "KV 1"]
    assert list(over.data[1].customdata[5]) == [1, 1]  # [layer, head] of the sixth cell
