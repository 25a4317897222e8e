"""Figure builders: arrays in, Plotly figures out. No Streamlit here, so each one is testable alone.

Conventions shared by every figure, so that pages read alike:

* token labels come from :func:`token_labels` ("3·e": position, a middle dot, the piece with
  whitespace made visible), so repeated tokens never collapse on a categorical axis;
* colour scales come from :data:`SCALES` through :func:`colorscale`: ``"weight"`` for values in
  [0, 1] (attention, probabilities), ``"signed"`` (centred on zero) for Q, K, V, scores and
  other signed activations, ``"score"`` for head scores and other unbounded non-negative values;
* matrices are sent to Plotly as float32 numpy arrays (compact JSON), never lists of float64;
* attention heatmaps put the query (the position that looks) on the y axis, top to bottom, and
  the key (the position looked at) on the x axis.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from lm_core.tokenizers import visible as _visible


def _memoize_plotly_key_paths() -> None:
    """Parse each of Plotly's property paths once per process, not at every use.

    Building a figure, Plotly turns every key such as ``"xaxis_title_text"`` or ``"layout.margin"``
    into a path by splitting it on ``.[]_`` (``plotly.basedatatypes._str_to_dict_path_full``; it
    even defines a class per call), thousands of times per page. Measured with the app's own
    pages (``AppTest``, process CPU per rerun, 2 cores): a new text on Attention 0.16 -> 0.12 s,
    a Next token on Generate 0.20 -> 0.16 s. That is the server's CPU for every press of every
    session, and under load the Python part of it runs one session at a time. The function is
    pure (a string in, a tuple and a list of indices out, which its two callers only read), so a
    cache returns the same answer. Idempotent; leaves Plotly untouched if the name ever moves.
    """
    import plotly.basedatatypes as bdt

    parse = getattr(bdt, "_str_to_dict_path_full", None)
    if parse is not None and not hasattr(parse, "cache_info"):
        bdt._str_to_dict_path_full = functools.lru_cache(maxsize=16384)(parse)


_memoize_plotly_key_paths()

__all__ = [
    "ACCENT", "MUTED", "SCALES", "MAX_DISPLAY_POINTS",
    "visible", "token_labels", "candidate_labels", "colorscale", "as_f32", "downsample_history",
    "attention_heatmap", "attention_grid", "head_score_overview", "query_attention",
    "loss_curves", "throughput_chart", "grad_norm_heatmap", "update_ratio_chart",
    "candidates_bar", "growing_attention", "prob_entropy_chart",
    "embedding_scatter", "neighbours_bar", "similarity_heatmap", "residual_norms",
    "matrix_heatmap", "vector_bar", "group_bar",
    "head_scores_over_time", "head_score_lines", "step_axis", "logit_lens_heatmap", "true_next_heatmap",
    "ablation_grid", "before_after_bar", "attention_difference",
]

ACCENT = "#e4572e"      # the one highlight colour: drawn token, selected head, val points
PRIMARY = "#3b5ba5"     # the main series colour
MUTED = "#9aa5b1"       # secondary series, "before" values

# One set of colour scales for the whole app.
SCALES: dict[str, list[list]] = {
    # 0 → white-ish, 1 → deep indigo: attention weights and probabilities.
    "weight": [[0.0, "#f7f8fc"], [0.15, "#d4dcf0"], [0.4, "#8ea3d6"], [0.7, "#3b5ba5"], [1.0, "#14213d"]],
    # negative → blue, 0 → white, positive → red.
    "signed": [[0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"]],
    # non-negative, unbounded: head scores, norms, gradient norms.
    "score": [[0.0, "#fcfdbf"], [0.25, "#feb078"], [0.5, "#f1605d"], [0.75, "#b73779"], [1.0, "#2c115f"]],
}

# Distinct colours for parameter groups (embeddings, blocks' attention/MLP, final LayerNorm).
GROUP_COLOURS = ["#3b5ba5", "#e4572e", "#17a398", "#f3a712", "#8c4fa1", "#5aa02c", "#d64f8a", "#2b9fd8",
                 "#a0522d", "#6c757d"]

MAX_DISPLAY_POINTS = 2000
MAX_GROUP_POINTS = 600      # per-group charts draw ~10 series: fewer points each
MAX_WRITTEN_CELLS = 160     # layers × heads grids write each cell's number up to this many cells
MAX_HEAD_TICKS = 48         # a "layer · head" axis names every row up to this many, else every layer

_FONT = dict(family="Inter, -apple-system, Segoe UI, Helvetica, Arial, sans-serif", size=12)


# ----------------------------------------------------------------------------- helpers


def visible(text: str) -> str:
    """Whitespace made visible: space ␣, newline ↵, tab ⇥, carriage return ␍ (lm_core's marks)."""
    return _visible(str(text))


def token_labels(pieces: Sequence[str], start: int = 0) -> list[str]:
    """Axis labels for a token sequence: ``"<position>·<piece>"``, unique by construction.

    ``pieces`` are display strings (``tokenizer.pieces(ids)``); raw whitespace is made visible
    here too, so raw text pieces are fine. ``start`` is the position of the first piece.
    """
    return [f"{start + i}·{visible(p)}" for i, p in enumerate(pieces)]


def candidate_labels(pieces: Sequence[str]) -> list[str]:
    """Labels for ranked candidates (distinct tokens): ``"#<rank> <piece>"``, unique by rank."""
    return [f"#{i + 1} {visible(p)}" for i, p in enumerate(pieces)]


def colorscale(kind: str) -> list[list]:
    """The app's colour scale for ``kind`` in ``SCALES`` ("weight", "signed" or "score")."""
    try:
        return SCALES[kind]
    except KeyError:
        raise ValueError(f"unknown colour scale {kind!r}; use one of {sorted(SCALES)}") from None


def as_f32(a) -> np.ndarray:
    """A contiguous float32 numpy array (torch tensors accepted): compact in Plotly's JSON."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def _lean_template() -> go.layout.Template:
    """Plotly's "plotly_white" look, only the parts these figures use (2D axes, 3D scene,
    heatmaps, bars, lines). The full template is validated on every figure that names it (~15–30 ms
    of CPU each, most of a figure's build time) and sent to the browser with each one (7 kB)."""
    full = pio.templates["plotly_white"].to_plotly_json()
    layout = {k: v for k, v in full["layout"].items() if k not in ("geo", "polar", "ternary")}
    data = {k: v for k, v in full["data"].items() if k in ("bar", "heatmap", "scatter", "scatter3d")}
    return go.layout.Template(layout=layout, data=data)


# Every figure built in this process starts from the lean template (go.Figure applies the default).
pio.templates["lm_lens"] = _lean_template()
pio.templates.default = "lm_lens"


def _template() -> dict:
    """The lean template as a plain dict, for :func:`_fast_figure`: a figure built without
    validation keeps what it is given (a bare template name would reach plotly.js, the HTML export
    and kaleido unresolved)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = pio.templates["lm_lens"].to_plotly_json()
    return copy.deepcopy(_TEMPLATE)


_TEMPLATE: dict | None = None


def _layout_dict(title: str | None = None, height: int | None = None, **kw) -> dict:
    """The layout every figure shares (title, font, margins, height) as a plain dict, for the
    figures built in one go by :func:`_fast_figure`; :func:`_layout` applies the same to a figure."""
    d = dict(font=dict(_FONT), margin=dict(l=10, r=10, t=40 if title else 10, b=10), **kw)
    if title:
        d["title"] = dict(text=title, x=0.0, xanchor="left", font=dict(size=14))
    if height is not None:
        d["height"] = height
    return d


def _layout(fig: go.Figure, title: str | None = None, height: int | None = None, **kw) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)) if title else None,
        font=_FONT,
        margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        height=height,
        **kw,
    )
    return fig


def _fast_figure(*traces: dict, **layout) -> go.Figure:
    """A figure from trace dicts (``type="heatmap"``, …) without Plotly's per-property validation:
    for the figures redrawn on every new text at real size (hundreds of heads), where validation
    cost more than the rest of the page's Python. Later ``update_*`` calls skip it too; the tests
    check what these figures hold. The figures redrawn at every press (Attention, Generate) pass
    their whole layout here (:func:`_layout_dict`): each ``update_*`` call afterwards walks
    Plotly's object tree, which cost 5-13 ms a figure of a server's CPU at every press."""
    return go.Figure(data=list(traces), layout={"template": _template(), **layout}, _validate=False)


def _category_ticks(n: int) -> dict:
    """Tick styling for a categorical token axis with ``n`` labels: rotated and smaller when dense."""
    if n > 40:
        return dict(tickangle=-90, tickfont=dict(size=8))
    if n > 16:
        return dict(tickangle=-60, tickfont=dict(size=10))
    return dict(tickangle=0)


def _signed_range(z: np.ndarray) -> tuple[float, float]:
    finite = z[np.isfinite(z)]
    m = float(np.abs(finite).max()) if finite.size else 1.0
    m = m or 1.0
    return -m, m


def downsample_history(history: pd.DataFrame | None, max_points: int = MAX_DISPLAY_POINTS) -> pd.DataFrame:
    """At most ``max_points`` rows of a training history for display.

    Rows are kept at an even stride plus the last one; rows with a validation loss are always
    kept (they are few and are the points people look for), so the chart stays honest.
    """
    if history is None:
        return pd.DataFrame(columns=["step"])
    n = len(history)
    if n <= max_points:  # also an empty frame, columns kept
        return history
    stride = math.ceil(n / max_points)
    keep = np.zeros(n, dtype=bool)
    keep[::stride] = True
    keep[-1] = True
    if "val_loss" in history:
        val = history["val_loss"].notna().to_numpy()
        if val.sum() <= max_points // 4:
            keep |= val
    return history.iloc[np.flatnonzero(keep)]


def _col(df: pd.DataFrame, name: str) -> np.ndarray | None:
    if name not in df.columns:
        return None
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)


# ----------------------------------------------------------------------------- attention


def attention_heatmap(pattern, labels: Sequence[str], title: str | None = None,
                      query_labels: Sequence[str] | None = None, height: int = 460) -> go.Figure:
    """One head's attention: ``pattern [Tq, Tk]`` (rows = queries, each row sums to 1).

    y axis: the query token (top = first); x axis: the key token it attends to; colour: weight.
    Hover shows the query, the key and the weight. ``labels`` label the keys; the queries use
    ``query_labels`` (default: the last ``Tq`` key labels, the usual square causal case).
    """
    z = as_f32(pattern)
    if z.ndim != 2:
        raise ValueError(f"pattern must be [Tq, Tk], got shape {z.shape}")
    tq, tk = z.shape
    keys = list(labels)
    if len(keys) != tk:
        raise ValueError(f"{len(keys)} key labels for {tk} key positions")
    queries = list(query_labels) if query_labels is not None else keys[tk - tq:]
    if len(queries) != tq:
        raise ValueError(f"{len(queries)} query labels for {tq} query positions")
    return _fast_figure(dict(
        type="heatmap", z=z, x=keys, y=queries, colorscale=colorscale("weight"), zmin=0.0, zmax=1.0,
        colorbar=dict(title=dict(text="weight"), thickness=12),
        hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
    ), **_layout_dict(title, height),
        xaxis=dict(title=dict(text="key (attended to)"), type="category", automargin=True, **_category_ticks(tk)),
        yaxis=dict(title=dict(text="query (attending)"), type="category", autorange="reversed", automargin=True,
                   tickfont=dict(size=8 if tq > 40 else 10)))


def attention_grid(patterns, labels: Sequence[str], layer: int, cols: int = 4,
                   selected_head: int | None = None, kv_heads: Sequence[int] | None = None) -> go.Figure:
    """All heads of one layer: ``patterns [H, T, T]`` as small heatmaps sharing one colour axis.

    Same axes as :func:`attention_heatmap` (query down, key across); ticks are hidden in the
    small panels, hover shows the tokens. ``kv_heads`` (grouped-query attention: the key/value
    head each query head reads) adds "· KV g" to each panel's title.

    The panels' axes are laid out here rather than by ``make_subplots``, whose per-axis
    validation dominated the page's time on a real-size layer (12 panels of 64 × 64).
    """
    z = as_f32(patterns)
    if z.ndim != 3:
        raise ValueError(f"patterns must be [H, Tq, Tk], got shape {z.shape}")
    n_head = z.shape[0]
    cols = max(1, min(cols, n_head))
    rows = math.ceil(n_head / cols)
    names = [f"head {h}" + (f" · KV {kv_heads[h]}" if kv_heads is not None else "") for h in range(n_head)]
    titles = [f"<b>{n}</b>" if h == selected_head else n for h, n in enumerate(names)]
    keys = list(labels)
    tk = z.shape[2]
    queries = keys[tk - z.shape[1]:]
    # ~55 px between rows (each row is ~230 px tall): room for the panel titles, and the gaps
    # never add up past the figure (a fixed 0.08 did from 13 rows: 49+ heads)
    hgap, vgap = 0.03, (min(0.08, 0.24 / rows) if rows > 1 else 0.0)
    width, height = (1 - hgap * (cols - 1)) / cols, (1 - vgap * (rows - 1)) / rows
    traces, layout, annotations = [], {}, []
    for h in range(n_head):
        r, c = divmod(h, cols)
        x0, y1 = c * (width + hgap), 1 - r * (height + vgap)
        suffix = "" if h == 0 else str(h + 1)
        traces.append(dict(
            type="heatmap", z=z[h], x=keys, y=queries, coloraxis="coloraxis", xaxis=f"x{suffix}",
            yaxis=f"y{suffix}",
            hovertemplate=f"L{layer} H{h}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}<extra></extra>",
        ))
        # clamped: float rounding left the last row's foot at -5.6e-17, which Plotly refuses (6 heads)
        layout[f"xaxis{suffix}"] = dict(domain=[max(0.0, x0), min(1.0, x0 + width)], anchor=f"y{suffix}",
                                        showticklabels=False, type="category")
        layout[f"yaxis{suffix}"] = dict(domain=[max(0.0, y1 - height), min(1.0, y1)], anchor=f"x{suffix}",
                                        showticklabels=False,
                                        type="category", autorange="reversed")
        annotations.append(dict(text=titles[h], x=x0 + width / 2, y=y1, xref="paper", yref="paper",
                                xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=16)))
    shared = _layout_dict(f"Layer {layer}: every head", height=max(280, 230 * rows + 40))
    shared["margin"]["t"] = 70
    return _fast_figure(*traces, **layout, **shared, annotations=annotations,
                        coloraxis=dict(colorscale=colorscale("weight"), cmin=0.0, cmax=1.0,
                                       colorbar=dict(title=dict(text="weight"), thickness=12)))


def _cell_overlay(fig: go.Figure, n_layer: int, n_head: int, text: Sequence[str], hovertemplate: str) -> None:
    """Transparent square markers on the cells of a layers × heads heatmap, so that a click
    selects a cell (Plotly heatmaps cannot be selected); each point's ``customdata`` is
    ``[layer, head]`` and it sits at x = head, y = layer."""
    ls, hs = np.meshgrid(np.arange(n_layer), np.arange(n_head), indexing="ij")
    fig.add_trace(go.Scatter(
        x=hs.ravel(), y=ls.ravel(), mode="markers",
        marker=dict(symbol="square", size=max(8, min(40, 420 // max(n_head, n_layer))), opacity=0.0),
        # plain ints, not a numpy array: a typed array would reach the selection event as {"0": l, "1": h}
        customdata=[[int(l), int(h)] for l, h in zip(ls.ravel(), hs.ravel())],
        text=list(text), hovertemplate=hovertemplate, showlegend=False, name="heads",
    ))


def _cell_overlay_trace(n_layer: int, n_head: int, text: Sequence[str], hovertemplate: str) -> dict:
    """:func:`_cell_overlay`'s trace as a dict, for :func:`_fast_figure`."""
    ls, hs = np.meshgrid(np.arange(n_layer), np.arange(n_head), indexing="ij")
    return dict(type="scatter", x=hs.ravel(), y=ls.ravel(), mode="markers",
                marker=dict(symbol="square", size=max(8, min(40, 420 // max(n_head, n_layer))), opacity=0.0),
                customdata=[[int(l), int(h)] for l, h in zip(ls.ravel(), hs.ravel())],
                text=list(text), hovertemplate=hovertemplate, showlegend=False, name="heads")


def _layer_head_axes_dict(n_layer: int, n_head: int) -> dict:
    """:func:`_layer_head_axes` as layout entries, for :func:`_fast_figure`."""
    return dict(xaxis=dict(title=dict(text="head"), tickmode="array", tickvals=list(range(n_head)),
                           range=[-0.5, n_head - 0.5]),
                yaxis=dict(title=dict(text="layer"), tickmode="array", tickvals=list(range(n_layer)),
                           range=[n_layer - 0.5, -0.5]))


def _layer_head_axes(fig: go.Figure, n_layer: int, n_head: int) -> None:
    fig.update_xaxes(title_text="head", tickmode="array", tickvals=list(range(n_head)), range=[-0.5, n_head - 0.5])
    fig.update_yaxes(title_text="layer", tickmode="array", tickvals=list(range(n_layer)),
                     range=[n_layer - 0.5, -0.5])


def head_score_overview(scores, metric: str, selected: tuple[int, int] | None = None,
                        zrange: tuple[float, float] | None = None,
                        groups: Sequence[Sequence[int]] | None = None) -> go.Figure:
    """Layers × heads overview of a head score: ``scores [L, H]``.

    y: layer (0 at the top), x: head, colour: the score. A transparent scatter trace sits on
    the cells so that clicking a cell selects it (Plotly heatmaps cannot be selected); its
    points carry ``customdata = [layer, head]``. ``selected`` outlines one cell. ``groups``
    (grouped-query attention: the query heads of each key/value head, consecutive) outlines
    each group of columns with a dashed frame labelled "KV g".
    """
    z = as_f32(scores)
    if z.ndim != 2:
        raise ValueError(f"scores must be [L, H], got shape {z.shape}")
    n_layer, n_head = z.shape
    lo, hi = zrange if zrange is not None else (None, None)
    # numbers in the cells only while they stay legible; a real-size model (270 heads) has the hover
    written = n_layer * n_head <= MAX_WRITTEN_CELLS
    heat = dict(type="heatmap", z=z, x=list(range(n_head)), y=list(range(n_layer)), colorscale=colorscale("score"),
                textfont=dict(size=10), colorbar=dict(title=dict(text=metric), thickness=12), hoverinfo="skip")
    heat.update({k: v for k, v in (("zmin", lo), ("zmax", hi), ("texttemplate", "%{z:.2f}" if written else None))
                 if v is not None})
    shapes, annotations = [], []
    for g, hs in enumerate(groups or ()):
        shapes.append(dict(type="rect", x0=min(hs) - 0.5, x1=max(hs) + 0.5, y0=-0.5, y1=n_layer - 0.5,
                           line=dict(color=MUTED, width=2, dash="dash")))
        annotations.append(dict(x=(min(hs) + max(hs)) / 2, y=-0.5, text=f"KV {g}", showarrow=False, yshift=10,
                                font=dict(size=10, color=MUTED)))
    if selected is not None:
        l, h = selected
        shapes.append(dict(type="rect", x0=h - 0.5, x1=h + 0.5, y0=l - 0.5, y1=l + 0.5,
                           line=dict(color=ACCENT, width=3)))
    extra = {k: v for k, v in (("shapes", shapes), ("annotations", annotations)) if v}
    return _fast_figure(
        heat, _cell_overlay_trace(n_layer, n_head, [f"{v:.3f}" for v in z.ravel()],
                                  "layer %{y}, head %{x}<br>" + metric + " %{text}<br>click to open<extra></extra>"),
        **_layout_dict(f"Head scores: {metric}", height=max(220, 44 * n_layer + 90),
                       clickmode="event+select", dragmode=False),
        **_layer_head_axes_dict(n_layer, n_head), **extra)


def query_attention(rows, labels: Sequence[str], query_label: str, n_layer: int, n_head: int,
                    title: str | None = None) -> go.Figure:
    """One query's attention in every head: ``rows [L, H, Tk]`` → a (L·H) × Tk heatmap.

    y: "L<layer> H<head>" (layer by layer, top to bottom), x: the key tokens, colour: weight.
    """
    z = as_f32(rows)
    if z.shape[:2] != (n_layer, n_head) or z.ndim != 3:
        raise ValueError(f"rows must be [L={n_layer}, H={n_head}, Tk], got shape {z.shape}")
    keys = list(labels)
    if len(keys) != z.shape[2]:
        raise ValueError(f"{len(keys)} key labels for {z.shape[2]} key positions")
    heads = [f"L{l} H{h}" for l in range(n_layer) for h in range(n_head)]
    return _fast_figure(dict(
        type="heatmap", z=z.reshape(n_layer * n_head, -1), x=keys, y=heads, colorscale=colorscale("weight"),
        zmin=0.0, zmax=1.0, colorbar=dict(title=dict(text="weight"), thickness=12),
        hovertemplate="%{y}<br>query " + query_label.replace("%", "%%") + "<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
    ), **_layout_dict(title or f"Where {query_label} looks, in every head",
                      height=max(240, (18 if len(heads) <= MAX_HEAD_TICKS else 8) * len(heads) + 110)),
        xaxis=dict(title=dict(text="key (attended to)"), type="category", automargin=True,
                   **_category_ticks(len(keys))),
        yaxis=dict(title=dict(text="layer · head"), type="category", autorange="reversed", automargin=True,
                   **_head_ticks(n_layer, n_head)))


def _head_ticks(n_layer: int, n_head: int) -> dict:
    """Ticks of a "L<l> H<h>" category axis: every row while few, else one per layer (the first
    head of each), so that 270 rows of a real-size model draw 30 labels; the hover names each row."""
    if n_layer * n_head <= MAX_HEAD_TICKS:
        return {}
    return dict(tickmode="array", tickvals=[f"L{l} H0" for l in range(n_layer)],
                ticktext=[f"L{l}" for l in range(n_layer)], tickfont=dict(size=9))


# ----------------------------------------------------------------------------- training


def loss_curves(history: pd.DataFrame, log_y: bool = False, title: str = "Loss",
                marks: Sequence[tuple[float, str]] = ()) -> go.Figure:
    """Train loss (line) and validation loss (marked points) against the step; each of ``marks``
    (step, label) is a dashed vertical line with its label (e.g. where an induction head formed)."""
    df = downsample_history(history)
    fig = go.Figure()
    step = _col(df, "step")
    tl = _col(df, "train_loss")
    if step is not None and tl is not None:
        fig.add_trace(go.Scatter(x=step, y=as_f32(tl), mode="lines", name="train loss",
                                 line=dict(color=PRIMARY, width=1.6)))
    vl = _col(df, "val_loss")
    if step is not None and vl is not None:
        ok = np.isfinite(vl)
        fig.add_trace(go.Scatter(x=step[ok], y=as_f32(vl[ok]), mode="lines+markers", name="val loss",
                                 line=dict(color=ACCENT, width=1.2, dash="dot"),
                                 marker=dict(size=8, color=ACCENT, symbol="diamond")))
    for step_, label in marks:
        fig.add_vline(x=float(step_), line=dict(color=ACCENT, dash="dash", width=1.5),
                      annotation_text=label, annotation_position="top right",
                      annotation_font=dict(size=11, color=ACCENT))
    _layout(fig, title, height=320, legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="cross-entropy (nats/token)", type="log" if log_y else "linear")
    return fig


def throughput_chart(history: pd.DataFrame) -> go.Figure:
    """Two panels against the step: tokens per second; bits per character (line: the training
    batch, diamonds: validation)."""
    df = downsample_history(history)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("tokens / s", "bits per character"),
                        horizontal_spacing=0.12)
    step = _col(df, "step")
    tps = _col(df, "tokens_per_s")
    if step is not None and tps is not None:
        fig.add_trace(go.Scatter(x=step, y=as_f32(tps), mode="lines", name="tokens/s",
                                 line=dict(color=PRIMARY)), row=1, col=1)
    tb = _col(df, "train_bpc")
    if step is not None and tb is not None:
        ok = np.isfinite(tb)
        fig.add_trace(go.Scatter(x=step[ok], y=as_f32(tb[ok]), mode="lines", name="train bpc",
                                 line=dict(color=PRIMARY, width=1.2)), row=1, col=2)
    vb = _col(df, "val_bpc")
    if step is not None and vb is not None:
        ok = np.isfinite(vb)
        fig.add_trace(go.Scatter(x=step[ok], y=as_f32(vb[ok]), mode="markers", name="val bpc",
                                 marker=dict(size=8, color=ACCENT, symbol="diamond")), row=1, col=2)
    fig.update_xaxes(title_text="step")
    _layout(fig, None, height=270, showlegend=False)
    fig.update_layout(margin=dict(t=30))
    return fig


def _group_columns(df: pd.DataFrame, prefix: str) -> list[str]:
    cols = [c for c in df.columns if c.startswith(prefix)]

    def order(c: str):
        g = c[len(prefix):]
        if g == "embed":
            return (0, 0, "")
        if g.startswith("blocks."):
            parts = g.split(".")
            try:
                return (1, int(parts[1]), parts[2] if len(parts) > 2 else "")
            except (IndexError, ValueError):
                return (1, 10**6, g)
        return (2, 0, g)

    return sorted(cols, key=order)


def grad_norm_heatmap(history: pd.DataFrame) -> go.Figure:
    """Gradient norm per parameter group over time: y = group (embeddings at the top, then each
    block's attention and MLP, then the final LayerNorm), x = step, colour = log10 of the norm."""
    df = downsample_history(history)
    cols = _group_columns(df, "grad_norm/")
    step = _col(df, "step")
    if not cols or step is None:
        fig = go.Figure()
        fig.add_annotation(text="no gradient norms logged yet", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
        return _layout(fig, "Gradient norm per layer", height=260)
    z = np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in cols])
    with np.errstate(divide="ignore", invalid="ignore"):
        zl = np.log10(np.where(z > 0, z, np.nan))
    groups = [c[len("grad_norm/"):] for c in cols]
    fig = go.Figure(go.Heatmap(
        z=as_f32(zl), x=step, y=groups, colorscale=colorscale("score"),
        customdata=as_f32(z), colorbar=dict(title=dict(text="log₁₀ ‖g‖"), thickness=12),
        hovertemplate="%{y}<br>step %{x}<br>‖grad‖ %{customdata:.3g}<extra></extra>",
    ))
    _layout(fig, "Gradient norm per layer", height=max(240, 22 * len(groups) + 100))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="parameter group", type="category", autorange="reversed")
    return fig


def update_ratio_chart(history: pd.DataFrame) -> go.Figure:
    """Update/weight ratio (‖Δw‖ / ‖w‖ per step) per parameter group, log scale; ~1e-3 is healthy."""
    df = downsample_history(history, MAX_GROUP_POINTS)
    cols = _group_columns(df, "update_ratio/")
    step = _col(df, "step")
    fig = go.Figure()
    for i, c in enumerate(cols):
        y = _col(df, c)
        fig.add_trace(go.Scatter(x=step, y=as_f32(y), mode="lines", name=c[len("update_ratio/"):],
                                 line=dict(width=1.3, color=GROUP_COLOURS[i % len(GROUP_COLOURS)])))
    if cols:
        fig.add_hline(y=1e-3, line=dict(color=MUTED, dash="dash"), annotation_text="1e-3",
                      annotation_position="bottom right")
    else:
        fig.add_annotation(text="no update ratios logged yet", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    _layout(fig, "Update / weight ratio", height=300)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="‖Δw‖ / ‖w‖", type="log")
    return fig


# ----------------------------------------------------------------------------- generation


def candidates_bar(candidate_pieces: Sequence[str], before, after, drawn: int | None,
                   title: str = "Top candidates") -> go.Figure:
    """Top candidates of one step, most likely first (top to bottom).

    Two bars per candidate: the model's probability at temperature 1 (grey, "before") and the
    probability actually sampled from after temperature / top-k / top-p (blue, "after"). The
    drawn candidate (index ``drawn`` into the lists) is orange. Clicking a bar selects that
    candidate (``customdata`` is its rank index).
    """
    labels = candidate_labels(candidate_pieces)
    b, a = as_f32(before), as_f32(after)
    if not (len(labels) == len(b) == len(a)):
        raise ValueError("candidate pieces, before and after must have the same length")
    colours = [ACCENT if i == drawn else PRIMARY for i in range(len(labels))]
    idx = list(range(len(labels)))  # plain ints: they come back in the selection event
    traces = [
        dict(type="bar", y=labels, x=b, orientation="h", name="model (T = 1)", marker=dict(color=MUTED),
             customdata=idx, hovertemplate="%{y}<br>model p %{x:.3f}<extra></extra>"),
        dict(type="bar", y=labels, x=a, orientation="h", name="sampled from (after T, top-k, top-p)",
             marker=dict(color=colours), customdata=idx, showlegend=False,
             hovertemplate="%{y}<br>sampled p %{x:.3f}<extra></extra>"),
    ]
    # The legend is drawn from swatch-only traces: a per-bar colour list would give the legend
    # the first bar's colour, orange whenever the top candidate was drawn.
    swatches = [("sampled from (after T, top-k, top-p)", PRIMARY)] + ([("drawn token", ACCENT)] if drawn is not None else [])
    for name, colour in swatches:
        traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                           marker=dict(symbol="square", size=11, color=colour)))
    layout = _layout_dict(title, height=max(220, 26 * len(labels) + 90) + 70, barmode="group",
                          # at the figure's foot, one entry per line, under the axis title (placed in the
                          # plot's coordinates it ran into that title at some widths)
                          legend=dict(orientation="v", yref="container", y=0.0, yanchor="bottom", x=0.0,
                                      xanchor="left"),
                          clickmode="event+select", dragmode=False)
    layout["margin"]["b"] = 80
    top = float(max(b.max(initial=0.0), a.max(initial=0.0)))
    return _fast_figure(*traces, **layout, yaxis=dict(type="category", autorange="reversed", automargin=True),
                        xaxis=dict(title=dict(text="probability"), range=[0, min(1.0, max(0.05, top * 1.15))]))


def growing_attention(rows: Sequence, starts: Sequence[int], position_labels: Sequence[str],
                      step_labels: Sequence[str], head_name: str) -> go.Figure:
    """One head's attention for each generated step, one row per step (steps × context).

    ``rows[i]`` is step i's attention over its context window, which starts at absolute
    position ``starts[i]``; ``position_labels`` label every absolute position of the sequence.
    Cells a step could not see are blank. y: the step (the token it predicted), x: position.
    """
    if len(rows) != len(starts) or len(rows) != len(step_labels):
        raise ValueError("rows, starts and step_labels must have the same length")
    width = len(position_labels)
    z = np.full((len(rows), width), np.nan, dtype=np.float32)
    for i, (r, s) in enumerate(zip(rows, starts)):
        r = as_f32(r)
        end = min(width, s + len(r))
        z[i, s:end] = r[: end - s]
    return _fast_figure(dict(
        type="heatmap", z=z, x=list(position_labels), y=list(step_labels), colorscale=colorscale("weight"),
        zmin=0.0, zmax=1.0, colorbar=dict(title=dict(text="weight"), thickness=12),
        hovertemplate="step %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
    ), **_layout_dict(f"{head_name}: attention of each new token", height=max(220, 22 * len(rows) + 120)),
        xaxis=dict(title=dict(text="context position (key)"), type="category", automargin=True,
                   **_category_ticks(width)),
        yaxis=dict(title=dict(text="generated step (query)"), type="category", autorange="reversed",
                   automargin=True))


def prob_entropy_chart(step_labels: Sequence[str], probs: Sequence[float], entropies: Sequence[float],
                       current: int | None = None) -> go.Figure:
    """Per generated step: probability of the drawn token (left axis) and entropy in bits (right)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = list(step_labels)
    fig.add_trace(go.Scatter(x=x, y=as_f32(probs), mode="lines+markers", name="p(drawn token)",
                             line=dict(color=PRIMARY)), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=as_f32(entropies), mode="lines+markers", name="entropy (bits)",
                             line=dict(color=ACCENT, dash="dot")), secondary_y=True)
    if current is not None and 0 <= current < len(x):
        fig.add_vline(x=current, line=dict(color=MUTED, width=8), opacity=0.35)
    _layout(fig, "Confidence per step", height=280, legend=dict(orientation="h", y=1.15, x=1, xanchor="right"))
    fig.update_xaxes(type="category", title_text="generated token")
    fig.update_yaxes(title_text="probability", range=[0, 1.02], secondary_y=False)
    fig.update_yaxes(title_text="entropy (bits)", rangemode="tozero", secondary_y=True)
    return fig


# ----------------------------------------------------------------------------- embeddings


def embedding_scatter(coords, labels: Sequence[str], title: str, highlight: Sequence[int] = (),
                      axis_titles: Sequence[str] | None = None) -> go.Figure:
    """Token embeddings projected to 2 or 3 dimensions (``coords [V, 2|3]``), one labelled point
    per token; ``highlight`` indices are drawn in the accent colour."""
    c = as_f32(coords)
    if c.ndim != 2 or c.shape[1] not in (2, 3):
        raise ValueError(f"coords must be [N, 2] or [N, 3], got shape {c.shape}")
    labels = [visible(s) for s in labels]
    if len(labels) != c.shape[0]:
        raise ValueError(f"{len(labels)} labels for {c.shape[0]} points")
    hl = set(int(i) for i in highlight)
    colours = [ACCENT if i in hl else PRIMARY for i in range(len(labels))]
    names = list(axis_titles) if axis_titles else [f"PC{i + 1}" for i in range(c.shape[1])]
    show_text = len(labels) <= 400
    mode = "markers+text" if show_text else "markers"
    if c.shape[1] == 2:
        fig = go.Figure(go.Scatter(
            x=c[:, 0], y=c[:, 1], mode=mode, text=labels, textposition="top center",
            marker=dict(size=7, color=colours, line=dict(width=0.5, color="white")),
            hovertemplate="%{text}<br>(%{x:.2f}, %{y:.2f})<extra></extra>",
        ))
        fig.update_xaxes(title_text=names[0], zeroline=True)
        fig.update_yaxes(title_text=names[1], zeroline=True)
        return _layout(fig, title, height=480)
    fig = go.Figure(go.Scatter3d(
        x=c[:, 0], y=c[:, 1], z=c[:, 2], mode=mode, text=labels,
        marker=dict(size=3.5, color=colours), textfont=dict(size=10),
        hovertemplate="%{text}<extra></extra>",
    ))
    fig.update_layout(scene=dict(xaxis_title=names[0], yaxis_title=names[1], zaxis_title=names[2]))
    return _layout(fig, title, height=520)


def neighbours_bar(labels: Sequence[str], similarity, title: str) -> go.Figure:
    """Nearest neighbours by cosine similarity, closest first (top to bottom)."""
    labels = candidate_labels(labels)
    s = as_f32(similarity)
    fig = go.Figure(go.Bar(y=labels, x=s, orientation="h", marker=dict(color=PRIMARY),
                           hovertemplate="%{y}<br>cosine %{x:.3f}<extra></extra>"))
    _layout(fig, title, height=max(220, 24 * len(labels) + 80))
    fig.update_yaxes(type="category", autorange="reversed", automargin=True)
    fig.update_xaxes(title_text="cosine similarity", range=[min(0.0, float(s.min(initial=0))), 1.0])
    return fig


def similarity_heatmap(sim, title: str, axis_title: str = "position") -> go.Figure:
    """A square cosine-similarity matrix (e.g. position embeddings × position embeddings);
    colour from -1 (blue) through 0 (white) to +1 (red)."""
    z = as_f32(sim)
    n = z.shape[0]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(n)), colorscale=colorscale("signed"), zmin=-1.0, zmax=1.0,
        colorbar=dict(title=dict(text="cosine"), thickness=12),
        hovertemplate=axis_title + " %{y} vs %{x}<br>cosine %{z:.3f}<extra></extra>",
    ))
    _layout(fig, title, height=460)
    fig.update_xaxes(title_text=axis_title, constrain="domain")
    fig.update_yaxes(title_text=axis_title, autorange="reversed", scaleanchor="x", constrain="domain")
    return fig


def residual_norms(norms, point_labels: Sequence[str], labels: Sequence[str]) -> go.Figure:
    """Norm of the residual stream: ``norms [P, T]`` with P points in depth (embeddings, after
    each block, …) as rows, top to bottom, and the tokens as columns; colour = L2 norm."""
    z = as_f32(norms)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(labels), y=list(point_labels), colorscale=colorscale("score"),
        colorbar=dict(title=dict(text="‖x‖"), thickness=12),
        hovertemplate="%{y}<br>token %{x}<br>norm %{z:.2f}<extra></extra>",
    ))
    _layout(fig, "Residual stream norm per layer", height=max(240, 30 * len(point_labels) + 120))
    fig.update_xaxes(title_text="token", type="category", automargin=True, **_category_ticks(z.shape[1]))
    fig.update_yaxes(title_text="depth", type="category", autorange="reversed", automargin=True)
    return fig


# ----------------------------------------------------------------------------- mechanics


def matrix_heatmap(mat, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                   kind: str = "signed", zrange: tuple[float, float] | None = None,
                   row_title: str = "", col_title: str = "", height: int | None = None,
                   show_values: bool = False) -> go.Figure:
    """A labelled matrix with the app's colour scale ``kind``. Signed scales are centred on 0;
    ``-inf`` (the causal mask) shows as a blank cell. ``show_values`` writes each number."""
    z = as_f32(mat)
    if z.ndim == 1:
        z = z[None, :]
    if z.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix shape {z.shape} does not match {len(row_labels)} × {len(col_labels)} labels")
    z = np.where(np.isfinite(z), z, np.nan).astype(np.float32)
    if zrange is None:
        zrange = _signed_range(z) if kind == "signed" else (None, None)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(col_labels), y=list(row_labels), colorscale=colorscale(kind),
        zmin=zrange[0], zmax=zrange[1], colorbar=dict(thickness=10),
        texttemplate="%{z:.2f}" if show_values else None, textfont=dict(size=9),
        hovertemplate="%{y} · %{x}<br>%{z:.4f}<extra></extra>",
    ))
    _layout(fig, title, height=height or max(200, 22 * len(row_labels) + 110))
    fig.update_xaxes(title_text=col_title, type="category", automargin=True, **_category_ticks(len(col_labels)))
    fig.update_yaxes(title_text=row_title, type="category", autorange="reversed", automargin=True)
    return fig


def vector_bar(values, labels: Sequence[str], title: str, highlight: int | None = None,
               x_title: str = "probability", height: int | None = None) -> go.Figure:
    """Horizontal bars, first label at the top; ``highlight`` in the accent colour."""
    v = as_f32(values)
    labels = list(labels)
    if len(labels) != len(v):
        raise ValueError(f"{len(labels)} labels for {len(v)} values")
    colours = [ACCENT if i == highlight else PRIMARY for i in range(len(v))]
    fig = go.Figure(go.Bar(y=labels, x=v, orientation="h", marker=dict(color=colours),
                           hovertemplate="%{y}<br>%{x:.4f}<extra></extra>"))
    _layout(fig, title, height=height or max(200, 24 * len(labels) + 80))
    fig.update_yaxes(type="category", autorange="reversed", automargin=True)
    fig.update_xaxes(title_text=x_title)
    return fig


def group_bar(groups: Sequence[str], values, title: str, y_title: str, log_y: bool = False,
              reference: float | None = None) -> go.Figure:
    """One bar per parameter group (embeddings, each block's attention and MLP, …)."""
    v = as_f32(values)
    fig = go.Figure(go.Bar(x=list(groups), y=v, marker=dict(color=PRIMARY),
                           hovertemplate="%{x}<br>%{y:.3g}<extra></extra>"))
    if reference is not None:
        fig.add_hline(y=reference, line=dict(color=ACCENT, dash="dash"))
    _layout(fig, title, height=300)
    fig.update_xaxes(type="category", title_text="parameter group", tickangle=-30)
    fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear")
    return fig


# ----------------------------------------------------------------------------- circuits


def _head_rows(heads: Sequence[tuple[int, int]]) -> list[str]:
    return [f"L{l} H{h}" for l, h in heads]


def step_axis(steps: Sequence[int], marks: Sequence[int] = ()) -> dict:
    """A numeric training-step axis that spans the data (half a column either side) and any
    marks, with whole-number ticks: a mark can never stretch it, one column never reads
    "249 / 249.5 / 250"."""
    s = np.unique(np.asarray(list(steps), dtype=np.float64))
    if not len(s):
        return dict(type="linear", tickformat=",d")
    gap = float(np.min(np.diff(s))) if len(s) > 1 else max(1.0, abs(float(s[0])) * 0.1)
    lo, hi = float(s[0]) - gap / 2, float(s[-1]) + gap / 2
    for m in marks:
        lo, hi = min(lo, float(m) - gap / 2), max(hi, float(m) + gap / 2)
    axis = dict(type="linear", range=[lo, hi], autorange=False, tickformat=",d")
    if len(s) <= 12:
        axis.update(tickmode="array", tickvals=[float(v) for v in s], ticktext=[f"{int(v):,}" for v in s])
    return axis


def log_step_axis(steps: Sequence[int]) -> dict:
    """A logarithmic training-step axis for steps spread over decades (Pythia's checkpoints: 0, 1,
    2, 4 … 143,000): the data sit at step + 1, so step 0 has a place, and the ticks read the steps."""
    s = np.unique(np.asarray(list(steps), dtype=np.int64))
    if len(s) > 12:
        s = s[np.unique(np.linspace(0, len(s) - 1, 12).round().astype(int))]
    return dict(type="log", tickmode="array", tickvals=[float(v + 1) for v in s], ticktext=[f"{int(v):,}" for v in s])


def head_scores_over_time(z, steps: Sequence[int], heads: Sequence[tuple[int, int]], metric: str,
                          zrange: tuple[float, float] | None = (0.0, 1.0), marks: Sequence[int] = (),
                          log_steps: bool = False) -> go.Figure:
    """A head score of every head over training: ``z [L*H, S]``, rows "L<layer> H<head>" (layer by
    layer, top to bottom), columns the recorded steps on a numeric step axis, colour the score.
    ``marks`` are steps outlined by a dashed line (e.g. where an induction head formed).
    ``log_steps``: a logarithmic axis, where x is step + 1 (see :func:`log_step_axis`)."""
    z = as_f32(z)
    rows = _head_rows(heads)
    if z.shape != (len(rows), len(steps)):
        raise ValueError(f"z has shape {z.shape}, expected {len(rows)} heads × {len(steps)} steps")
    lo, hi = zrange if zrange is not None else (None, None)
    shift = 1.0 if log_steps else 0.0
    fig = go.Figure(go.Heatmap(
        z=z, x=np.asarray(steps, dtype=np.float64) + shift, y=rows, colorscale=colorscale("score"), zmin=lo,
        zmax=hi, colorbar=dict(title=dict(text=metric), thickness=12),
        customdata=np.broadcast_to(np.asarray(steps, dtype=np.float64), z.shape),
        hovertemplate="%{y}<br>step %{customdata:,d}<br>" + metric + " %{z:.3f}<extra></extra>",
    ))
    for m in marks:
        fig.add_vline(x=float(m) + shift, line=dict(color=ACCENT, dash="dash", width=1.5))
    _layout(fig, f"{metric.capitalize()} score of every head over training", height=max(240, 16 * len(rows) + 120))
    fig.update_xaxes(title_text="step (log scale)" if log_steps else "step",
                     **(log_step_axis(steps) if log_steps else step_axis(steps, marks)))
    fig.update_yaxes(title_text="layer · head", type="category", autorange="reversed", automargin=True)
    return fig


def head_score_lines(z, steps: Sequence[int], heads: Sequence[tuple[int, int]], metric: str,
                     highlight: tuple[int, int] | None = None, marks: Sequence[int] = (),
                     log_steps: bool = False) -> go.Figure:
    """The same scores as lines, one per head, coloured by layer; ``highlight`` is drawn thick.
    ``log_steps``: a logarithmic axis, where x is step + 1 (see :func:`log_step_axis`)."""
    z = as_f32(z)
    shift = 1.0 if log_steps else 0.0
    x = np.asarray(steps, dtype=np.float64) + shift
    fig = go.Figure()
    for i, (l, h) in enumerate(heads):
        hl = highlight == (l, h)
        fig.add_trace(go.Scatter(
            x=x, y=z[i], mode="lines+markers", name=f"L{l} H{h}", legendgroup=f"layer {l}",
            line=dict(color=GROUP_COLOURS[l % len(GROUP_COLOURS)], width=3.2 if hl else 1.2),
            marker=dict(size=5 if hl else 3), opacity=1.0 if hl or highlight is None else 0.55,
            customdata=np.asarray(steps, dtype=np.float64),
            hovertemplate=f"L{l} H{h}<br>step %{{customdata:,d}}<br>{metric} %{{y:.3f}}<extra></extra>",
        ))
    for m in marks:
        fig.add_vline(x=float(m) + shift, line=dict(color=ACCENT, dash="dash", width=1.5))
    _layout(fig, f"{metric.capitalize()} score per head", height=340,
            legend=dict(font=dict(size=10), tracegroupgap=2))
    fig.update_xaxes(title_text="step (log scale)" if log_steps else "step",
                     **(log_step_axis(steps) if log_steps else step_axis(steps, marks)))
    fig.update_yaxes(title_text=metric)
    return fig


def logit_lens_heatmap(top_probs, top_pieces: Sequence[Sequence[str]], row_labels: Sequence[str],
                       labels: Sequence[str], hover: Sequence[Sequence[str]] | None = None) -> go.Figure:
    """What the model would predict after each layer: ``top_probs [R, T]`` is the probability of
    the top-1 next token at each layer boundary (rows, ``row_labels``: embeddings at the top, the
    model's output at the bottom) and position (columns, token ``labels``); each cell is written
    with that token (``top_pieces [R][T]``) and coloured by its probability. ``hover [R][T]``
    (optional) adds the runners-up to the tooltip."""
    z = as_f32(top_probs)
    R, T = z.shape
    if len(row_labels) != R or len(labels) != T:
        raise ValueError(f"{len(row_labels)} row and {len(labels)} column labels for a {R} × {T} lens")
    text = [[visible(p) for p in row] for row in top_pieces]
    if len(text) != R or any(len(r) != T for r in text):
        raise ValueError(f"top_pieces must be {R} × {T}")
    custom = [list(r) for r in hover] if hover is not None else [["" for _ in range(T)] for _ in range(R)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(labels), y=list(row_labels), colorscale=colorscale("weight"), zmin=0.0, zmax=1.0,
        text=text, texttemplate="%{text}" if R * T <= 2500 else None, textfont=dict(size=10 if T <= 32 else 8),
        customdata=custom, colorbar=dict(title=dict(text="p(top-1)"), thickness=12),
        hovertemplate="after %{y}, at %{x}<br>top guess %{text} (p %{z:.3f})<br>%{customdata}<extra></extra>",
    ))
    _layout(fig, "Logit lens: the top next-token guess after each layer", height=max(240, 34 * R + 150))
    fig.update_xaxes(title_text="position (the token read)", type="category", automargin=True, **_category_ticks(T))
    fig.update_yaxes(title_text="after", type="category", autorange="reversed", automargin=True)
    return fig


def true_next_heatmap(probs, row_labels: Sequence[str], labels: Sequence[str], next_pieces: Sequence[str],
                      log: bool = False) -> go.Figure:
    """Probability of the token that actually comes next, ``probs [R, T-1]``, after each layer
    (rows) at each position (columns, labelled by the token read; the hover names the token to
    predict). ``log`` colours log₁₀ p instead (small probabilities become visible)."""
    p = as_f32(probs)
    R, Tm = p.shape
    if len(row_labels) != R or len(labels) != Tm or len(next_pieces) != Tm:
        raise ValueError(f"labels do not match a {R} × {Tm} matrix")
    custom = [[visible(n) for n in next_pieces] for _ in range(R)]
    if log:
        z = np.log10(np.clip(p, 1e-6, 1.0)).astype(np.float32)
        scale, lo, hi, bar = colorscale("weight"), -6.0, 0.0, "log₁₀ p"
    else:
        z, scale, lo, hi, bar = p, colorscale("weight"), 0.0, 1.0, "p(true next)"
    fig = go.Figure(go.Heatmap(
        z=z, x=list(labels), y=list(row_labels), colorscale=scale, zmin=lo, zmax=hi, customdata=custom,
        text=[[f"{v:.3f}" for v in row] for row in p], colorbar=dict(title=dict(text=bar), thickness=12),
        hovertemplate="after %{y}, at %{x}<br>p(next = %{customdata}) = %{text}<extra></extra>",
    ))
    _layout(fig, "Probability of the true next token after each layer", height=max(240, 30 * R + 150))
    fig.update_xaxes(title_text="position (the token read)", type="category", automargin=True,
                     **_category_ticks(Tm))
    fig.update_yaxes(title_text="after", type="category", autorange="reversed", automargin=True)
    return fig


# ----------------------------------------------------------------------------- ablation


def ablation_grid(off, effects=None, metric: str = "loss increase when ablated alone") -> go.Figure:
    """Layers × heads, ``off [L, H]`` (bool) marks the heads switched off (an orange ✕ and outline).
    Colour: ``effects [L, H]`` (e.g. the loss increase when that head alone is ablated; signed,
    centred on 0; written in the cells of small grids) or plain. Clicking a cell selects it
    (the last trace's ``customdata = [layer, head]``)."""
    mask = np.asarray(off, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"off must be [L, H], got shape {mask.shape}")
    n_layer, n_head = mask.shape
    if effects is not None:
        z = as_f32(effects)
        if z.shape != mask.shape:
            raise ValueError(f"effects {z.shape} and off {mask.shape} differ")
        lo, hi = _signed_range(z)
        scale, bar = colorscale("signed"), dict(title=dict(text="Δ loss"), thickness=12)
    else:
        z = np.zeros(mask.shape, dtype=np.float32)
        lo, hi, scale, bar = -1.0, 1.0, colorscale("signed"), None
    show_values = effects is not None and n_layer * n_head <= 64
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n_head)), y=list(range(n_layer)), colorscale=scale, zmin=lo, zmax=hi,
        texttemplate="%{z:+.2f}" if show_values else None, textfont=dict(size=10),
        showscale=effects is not None, colorbar=bar, hoverinfo="skip",
    ))
    ls, hs = np.nonzero(mask)
    fig.add_trace(go.Scatter(x=hs, y=ls, mode="markers", hoverinfo="skip", showlegend=False, name="off",
                             marker=dict(symbol="x-thin", size=max(10, min(30, 300 // max(n_head, n_layer))),
                                         line=dict(color=ACCENT, width=3))))
    vals = [f"{v:+.3f}" if effects is not None else "–" for v in z.ravel()]
    states = ["off" if m else "on" for m in mask.ravel()]
    _cell_overlay(fig, n_layer, n_head, [f"{s} · {metric} {v}" for s, v in zip(states, vals)],
                  "layer %{y}, head %{x}: %{text}<br>click to switch on/off<extra></extra>")
    for l, h in zip(ls, hs):
        fig.add_shape(type="rect", x0=h - 0.5, x1=h + 0.5, y0=l - 0.5, y1=l + 0.5, line=dict(color=ACCENT, width=2.5))
    _layout(fig, "Heads: click to switch off / on", height=max(220, 40 * n_layer + 100),
            clickmode="event+select", dragmode=False)
    _layer_head_axes(fig, n_layer, n_head)
    return fig


def before_after_bar(labels: Sequence[str], before, after, title: str,
                     names: tuple[str, str] = ("intact", "ablated"), highlight: int | None = None,
                     x_title: str = "probability") -> go.Figure:
    """Two bars per label (first label at the top): ``before`` in grey, ``after`` in blue;
    ``highlight`` (an index) is the accent colour in the ``after`` series (e.g. the true next token)."""
    b, a = as_f32(before), as_f32(after)
    labels = list(labels)
    if not (len(labels) == len(b) == len(a)):
        raise ValueError("labels, before and after must have the same length")
    colours = [ACCENT if i == highlight else PRIMARY for i in range(len(labels))]
    fig = go.Figure()
    fig.add_trace(go.Bar(y=labels, x=b, orientation="h", name=names[0], marker=dict(color=MUTED),
                         hovertemplate="%{y}<br>" + names[0] + " %{x:.4f}<extra></extra>"))
    fig.add_trace(go.Bar(y=labels, x=a, orientation="h", name=names[1], marker=dict(color=colours),
                         hovertemplate="%{y}<br>" + names[1] + " %{x:.4f}<extra></extra>"))
    _layout(fig, title, height=max(220, 26 * len(labels) + 100), barmode="group",
            legend=dict(orientation="h", y=-0.12))
    fig.update_yaxes(type="category", autorange="reversed", automargin=True)
    fig.update_xaxes(title_text=x_title)
    return fig


def attention_difference(a, b, labels: Sequence[str], title: str, names: tuple[str, str] = ("A", "B")) -> go.Figure:
    """``b - a`` of two patterns ``[T, T]`` on the same text (query rows, key columns): red where
    B attends more, blue where A does; the future (above the diagonal) is blank."""
    za, zb = as_f32(a), as_f32(b)
    if za.shape != zb.shape or za.ndim != 2:
        raise ValueError(f"patterns must have the same [T, T] shape, got {za.shape} and {zb.shape}")
    d = zb - za
    T = d.shape[0]
    d[np.triu_indices(T, 1)] = np.nan
    finite = np.abs(d[np.isfinite(d)])
    m = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig = matrix_heatmap(d, list(labels), list(labels), title, kind="signed", zrange=(-m, m),
                         row_title="query (attending)", col_title="key (attended to)", height=460)
    fig.data[0].hovertemplate = ("query %{y}<br>key %{x}<br>" + f"{names[1]} − {names[0]}" +
                                 " %{z:+.3f}<extra></extra>")
    fig.data[0].colorbar = dict(title=dict(text="B − A"), thickness=12)
    return fig


# ----------------------------------------------------------------------------- margins
# Plotly's ``automargin`` draws a figure, measures its tick labels, colour bars and legend, and if
# they do not fit the margins it widens them and draws the whole figure again. Every chart a rerun
# sends is drawn that way (twice more in Streamlit, which mounts a new chart and then sizes it), so
# most draws happened twice: the browser's largest cost when six people press at once on one small
# server. :func:`fit_margins` estimates, from the figure alone, the room its labels take and starts
# the margins there (a few pixels generous), so the first draw fits. Automargin stays on: where an
# estimate falls short (another font), Plotly still widens the margin as before, nothing is cut.

_CHAR_W = 0.56    # a digit's advance in the app's sans-serif (Arial metrics), in font sizes
_LINE_H = 1.25    # a line of text, in font sizes
# Advances of the characters that differ most from a digit's (Arial / Liberation Sans / Helvetica,
# which the font list falls back to; Inter is a little wider, where the 4 % margin below goes).
_NARROW = dict.fromkeys("fijlrtI.,:;!|'`·()[]-", 0.3) | dict.fromkeys(" ", 0.28)
_WIDE = dict.fromkeys("mwMW%@", 0.86) | dict.fromkeys("ABCDEFGHJKLNOPQRSTUVXYZ&", 0.68)


def _char_w(c: str) -> float:
    if c in _NARROW:
        return _NARROW[c]
    if c in _WIDE:
        return _WIDE[c]
    if ord(c) < 0x100:
        return _CHAR_W
    if 0x2000 <= ord(c) < 0x2070:  # general punctuation: quotes, dashes, ellipsis
        return 0.6
    return 1.0  # symbols such as ␣ and ↵, from wider fallback fonts


_TAG = re.compile(r"<[^>]+>")  # <b>, <br> in titles and labels take no room


def _text_w(text: str, size: float) -> float:
    plain = _TAG.sub("", str(text))
    return 1.04 * size * sum(_char_w(c) for c in plain)


def _get(d: dict | None, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return default if d is None else d


def _axis_labels(fig: go.Figure, name: str, axis: dict) -> list[str]:
    """The tick labels axis ``name`` (a layout dict) will show; a short number when Plotly picks them."""
    if axis.get("showticklabels") is False:
        return []
    if axis.get("ticktext") is not None:
        return [str(t) for t in axis["ticktext"]]
    if axis.get("tickvals") is not None:
        return [str(v) for v in axis["tickvals"]]
    ref = name.replace("axis", "")  # "xaxis2" -> "x2"
    letter = ref[0]
    labels: list[str] = []
    numeric = False
    for t in fig.data:
        if (getattr(t, f"{letter}axis", None) or letter) != ref:
            continue
        vals = getattr(t, letter, None)
        if vals is None:
            continue
        vals = [v for v in (list(vals) if not isinstance(vals, (str, bytes)) else [vals]) if v is not None]
        if not vals:
            continue
        if axis.get("type") == "category" or isinstance(vals[0], str):
            labels.extend(str(v) for v in vals)
        else:
            numeric = True
    if numeric or not labels:
        return ["−0.00"]  # a number: Plotly picks ~5 ticks of a few digits
    return labels


def _axis_push(fig: go.Figure, name: str, axis: dict, size: float, look: dict) -> float:
    labels = _axis_labels(fig, name, axis)
    title = _get(axis, "title", "text")
    if not labels and not title:
        return 0.0
    tsize = _get(axis, "tickfont", "size", default=size)
    w = max((_text_w(s, tsize) for s in labels), default=0.0)
    h = _LINE_H * tsize if labels else 0.0
    angle = axis.get("tickangle")
    a = math.radians(angle if isinstance(angle, (int, float)) else 0.0)
    if name.startswith("x"):
        depth = abs(w * math.sin(a)) + abs(h * math.cos(a))
    else:
        depth = abs(w * math.cos(a)) + abs(h * math.sin(a))
    if title:
        tfont = _get(axis, "title", "font", "size", default=look.get("title_size", size))
        depth += _get(axis, "title", "standoff", default=look.get("standoff_" + name[0], 15)) + _LINE_H * tfont
    else:
        depth += 6  # without a title Plotly leaves a little more room past the labels
    return depth + 15


def _colorbar_push(title: str | None, thickness: float, size: float, title_size: float, side: str | None) -> float:
    """Room right of the plot for a vertical colour bar at x = 1: pads, the bar, its tick labels
    (a few digits) and its title, above the bar (Plotly's default) or beside it."""
    w = 2 * 10 + thickness + 4.6 * size * _CHAR_W + 6  # xpad both sides, the bar, "0.25" / "−0.25"
    if title:
        tw = _text_w(title, title_size)
        w = max(w, 40 + tw) if (side or "top") == "top" else w + _LINE_H * title_size + 4
    return w


def fit_margins(fig: go.Figure, look: dict | None = None) -> go.Figure:
    """Start ``fig``'s margins where Plotly's automargin would end (see the note above); in place.

    Left and bottom: the outer axes' tick labels and titles; right: a vertical colour bar (placed
    at x = 1, 10 px from the plot, so its room does not depend on the width). Only ever widens a
    margin the figure set; where a legend sits anywhere but at the foot, the bottom and right
    stay Plotly's to measure. ``look``: what the page's theme sets where the figure sets nothing
    (``title_size``, ``standoff_x``, ``standoff_y``, ``colorbar_title_size``); plain plotly.js
    when None."""
    look = look or {}
    lay = fig.layout.to_plotly_json()  # plain dicts: a figure's properties are slow to read one by one
    lay.pop("template", None)
    size = _get(lay, "font", "size", default=12)
    m = {side: _get(lay, "margin", side, default=80) for side in "lrtb"}
    need = {"l": 0.0, "r": 0.0, "b": 0.0}
    for name, axis in lay.items():
        if not name.startswith(("xaxis", "yaxis")) or axis.get("automargin") is False or axis.get("visible") is False:
            continue
        domain = axis.get("domain") or (0, 1)
        if name.startswith("y") and axis.get("side") != "right" and domain[0] <= 0 \
                and axis.get("anchor", "x") in ("x", "free"):
            need["l"] = max(need["l"], _axis_push(fig, name, axis, size, look))
        elif name.startswith("x") and axis.get("side") != "top" and domain[0] <= 0.01 \
                and axis.get("anchor", "y") in ("y", "free"):
            need["b"] = max(need["b"], _axis_push(fig, name, axis, size, look))
            if axis.get("type") != "category" and domain[1] >= 0.99:
                need["r"] = max(need["r"], 20.0)  # half the last number ("1.0") past the plot's edge
    bars = []  # (the colour bar to place, its layout dict)
    if _get(lay, "coloraxis", "showscale", default=True) and "coloraxis" in lay and any(
            getattr(t, "coloraxis", None) for t in fig.data):
        bars.append((fig.layout.coloraxis.colorbar, _get(lay, "coloraxis", "colorbar", default={})))
    for t in fig.data:
        if t.type == "heatmap" and not t.coloraxis and t.showscale is not False:
            bars.append((t.colorbar, t.colorbar.to_plotly_json()))
    for cb, d in bars:
        if d.get("orientation") != "h" and d.get("x") is None:
            cb.update(x=1.0, xanchor="left", xpad=10)
            tsize = _get(d, "title", "font", "size", default=look.get("colorbar_title_size", size))
            need["r"] = max(need["r"], _colorbar_push(_get(d, "title", "text"), d.get("thickness", 30), size,
                                                      tsize, _get(d, "title", "side")))
    entries = sum(1 for t in fig.data if t.showlegend is not False and t.name)
    if lay.get("showlegend") is not False and (entries > 1 or lay.get("showlegend")):
        leg = lay.get("legend", {})
        if (leg.get("orientation") == "v" and leg.get("yref") == "container" and not leg.get("y")
                and leg.get("yanchor") == "bottom"):
            need["b"] += entries * 19 + 12  # one line per entry, at the foot
        else:  # elsewhere: its room is Plotly's to measure
            del need["b"], need["r"]
    wider = {s: math.ceil(v) for s, v in need.items() if v > m[s]}
    if wider:
        fig.update_layout(margin=wider)
    return fig
