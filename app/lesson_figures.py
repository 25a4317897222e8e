"""Figures for the article's lessons: the Markov baseline, over-fitting, and surprise per token.

Pure functions, arrays in and Plotly figures out, following :mod:`app.figures` (its token
labels, colour scales, float32 payloads and layout):

* :func:`loss_with_baselines`: the loss chart with the n-gram baselines as reference lines
  and a mark where the transformer passes each;
* :func:`surprise_strip`: a text with each token coloured by the model's loss on it, the top
  alternatives on hover;
* :func:`surprise_comparison`: transformer vs. bigram per token, and the difference;
* :func:`overfit_curves`: train and val curves of several runs overlaid, with the step where
  val stopped improving and the step where each run stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.figures import (ACCENT, GROUP_COLOURS, MUTED, PRIMARY, _category_ticks, _col, _layout, as_f32,
                         candidate_labels, colorscale, downsample_history, loss_curves, token_labels, visible)

__all__ = ["BASELINE_COLOURS", "loss_with_baselines", "surprise_strip", "surprise_comparison",
           "overfit_curves", "next_token_comparison"]

# unigram, bigram, trigram, 4-gram: distinct from the train (PRIMARY) and val (ACCENT) series
BASELINE_COLOURS = ["#6c757d", "#17a398", "#8c4fa1", "#f3a712"]


def _baseline_colour(b: Mapping[str, Any], i: int) -> str:
    n = int(b.get("n", i + 1))
    return BASELINE_COLOURS[(n - 1) % len(BASELINE_COLOURS)]


# ----------------------------------------------------------------------------- the Markov baseline


def loss_with_baselines(history: pd.DataFrame | None, baselines: Sequence[Mapping[str, Any]],
                        passed_at: Mapping[str, int | None] | None = None, log_y: bool = False,
                        title: str = "Loss against the n-gram baselines",
                        marks: Sequence[tuple[float, str]] = ()) -> go.Figure:
    """Train and val loss (as :func:`app.figures.loss_curves`) with one horizontal dotted line
    per baseline at its val loss, labelled by name ("unigram", "bigram Markov chain", …), and
    a ring on each line at the step where the transformer's val loss first went below it.

    ``baselines`` are rows of :func:`lm_core.ngram.baseline_losses` (``name``, ``val_loss``,
    optionally ``n``); ``passed_at`` maps a name to a step or None (computed from the history
    when not given). ``marks``: (step, label) vertical lines, as in :func:`app.figures.loss_curves`
    (where an induction head formed, where val was best, where the run stopped).
    """
    from lm_core.ngram import passed_at as _passed_at

    fig = loss_curves(history if history is not None else pd.DataFrame(columns=["step"]), log_y=log_y,
                      title=title, marks=marks)
    step = _col(history, "step") if history is not None else None
    finite = step[np.isfinite(step)] if step is not None else np.zeros(0)
    x0, x1 = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if x1 <= x0:
        x1 = x0 + 1.0
    if passed_at is None:
        passed_at = _passed_at(history, baselines)
    px, py, ptext = [], [], []
    for i, b in enumerate(baselines):
        name, v = str(b["name"]), float(b["val_loss"])
        colour = _baseline_colour(b, i)
        fig.add_trace(go.Scatter(
            x=as_f32([x0, x1]), y=as_f32([v, v]), mode="lines+text", name=f"{name} ({v:.3f})",
            line=dict(color=colour, dash="dot", width=1.5), text=["", name], textposition="top left",
            textfont=dict(size=11, color=colour), legendgroup="baselines",
            hovertemplate=f"{name}: val loss {v:.3f} nats/token<extra></extra>"))
        s = passed_at.get(name)
        if s is not None:
            px.append(float(s))
            py.append(v)
            ptext.append(f"passes the {name} at step {int(s):,}")
    if px:
        fig.add_trace(go.Scatter(
            x=as_f32(px), y=as_f32(py), mode="markers", name="transformer passes",
            marker=dict(size=12, color="rgba(0,0,0,0)", line=dict(color=ACCENT, width=2.2), symbol="circle"),
            text=ptext, hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(height=360)
    return fig


# ----------------------------------------------------------------------------- surprise


def _aligned(pieces: Sequence[str], losses) -> np.ndarray:
    """Losses as float32 [T], NaN for the first token when ``losses`` has T - 1 entries."""
    arr = as_f32(losses).reshape(-1)
    T = len(pieces)
    if len(arr) == T - 1:
        arr = np.concatenate([np.full(1, np.nan, dtype=np.float32), arr])
    if len(arr) != T:
        raise ValueError(f"losses has {len(arr)} entries; for {T} tokens give {T - 1} "
                         f"(one per predicted token) or {T}")
    return arr


def _hover_lines(pieces: Sequence[str], losses: np.ndarray,
                 alternatives: Sequence[Sequence[tuple[str, float]]] | None) -> list[str]:
    """One hover text per token: its loss, its probability, and what the model expected."""
    T = len(pieces)
    if alternatives is not None and len(alternatives) == T - 1:
        alternatives = [()] + list(alternatives)
    out = []
    for i, (p, l) in enumerate(zip(pieces, losses)):
        head = f"{i}·{visible(p)}"
        if not np.isfinite(l):
            out.append(f"{head}<br>the first token: nothing before it predicts it")
            continue
        line = f"{head}<br>loss {l:.2f} nats ({l / math.log(2):.2f} bits), p = {math.exp(-float(l)):.3f}"
        if alternatives is not None and alternatives[i]:
            alts = " · ".join(f"{visible(a)} {q:.2f}" for a, q in alternatives[i])
            line += f"<br>expected: {alts}"
        out.append(line)
    return out


def surprise_strip(pieces: Sequence[str], losses, alternatives: Sequence[Sequence[tuple[str, float]]] | None = None,
                   title: str | None = None, per_row: int = 32, zmax: float | None = None) -> go.Figure:
    """The text as rows of cells, each token coloured by the model's loss on it (−ln p of that
    token given the ones before, nats; darker = more surprised), its top alternatives on hover.

    ``losses`` has one entry per predicted token (``len(pieces) - 1``: entry i is token i + 1,
    the first token is left blank) or one per token. ``alternatives``: per predicted token,
    ``(piece, probability)`` pairs (``Surprise.alternatives()``). Give two strips the same
    ``zmax`` so their colours compare.
    """
    if per_row < 1:
        raise ValueError(f"per_row must be at least 1, got {per_row}")
    T = len(pieces)
    z = _aligned(pieces, losses)
    rows = max(1, math.ceil(T / per_row))
    grid = np.full(rows * per_row, np.nan, dtype=np.float32)
    grid[:T] = z
    text = np.full(rows * per_row, "", dtype=object)
    text[:T] = [visible(p) for p in pieces]
    hover = np.full(rows * per_row, "", dtype=object)
    hover[:T] = _hover_lines(pieces, z, alternatives)
    finite = z[np.isfinite(z)]
    top = float(zmax) if zmax is not None else (float(finite.max()) if finite.size else 1.0)
    fig = go.Figure(go.Heatmap(
        z=grid.reshape(rows, per_row), text=text.reshape(rows, per_row).tolist(),
        customdata=hover.reshape(rows, per_row).tolist(), texttemplate="%{text}",
        textfont=dict(size=12), colorscale=colorscale("score"), zmin=0.0, zmax=max(top, 1e-6),
        xgap=2, ygap=2, hovertemplate="%{customdata}<extra></extra>", hoverongaps=False,
        # title beside the bar and a few ticks: a strip of one or two rows leaves the bar ~60 px
        colorbar=dict(title=dict(text="loss (nats)", side="right"), thickness=12, nticks=4)))
    _layout(fig, title, height=max(140, 70 + 30 * rows))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    return fig


def surprise_comparison(pieces: Sequence[str], model_losses, baseline_losses,
                        names: tuple[str, str] = ("transformer", "bigram Markov chain"),
                        title: str | None = None) -> go.Figure:
    """Per predicted token (x: ``"position·piece"`` of the token being predicted): the loss of
    the transformer and of the baseline (top), and the baseline minus the transformer (bottom;
    accent bars above zero are where looking further back helped).

    ``model_losses`` and ``baseline_losses`` have ``len(pieces) - 1`` entries (entry i is
    token i + 1), as in :class:`lm_core.surprise.Surprise`.
    """
    m = as_f32(model_losses).reshape(-1)
    b = as_f32(baseline_losses).reshape(-1)
    if len(m) != len(b) or len(m) != len(pieces) - 1:
        raise ValueError(f"expected {len(pieces) - 1} losses per model for {len(pieces)} tokens, "
                         f"got {len(m)} and {len(b)}")
    labels = token_labels(list(pieces)[1:], start=1)
    gain = (b - m).astype(np.float32)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4],
                        subplot_titles=("loss on each token (nats)",
                                        f"{names[1]} − {names[0]}: nats saved by looking further back"))
    fig.add_trace(go.Scatter(x=labels, y=m, mode="lines+markers", name=names[0],
                             line=dict(color=PRIMARY, width=1.6), marker=dict(size=5),
                             hovertemplate="%{x}: %{y:.2f} nats<extra>" + names[0] + "</extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=labels, y=b, mode="lines+markers", name=names[1],
                             line=dict(color=MUTED, width=1.4, dash="dot"), marker=dict(size=5),
                             hovertemplate="%{x}: %{y:.2f} nats<extra>" + names[1] + "</extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=gain, name="difference", showlegend=False,
                         marker=dict(color=np.where(gain >= 0, ACCENT, MUTED).tolist()),
                         hovertemplate="%{x}: %{y:+.2f} nats<extra></extra>"), row=2, col=1)
    fig.update_xaxes(**_category_ticks(len(labels)), row=2, col=1)
    _layout(fig, title, height=460, legend=dict(orientation="h", y=1.1, x=1, xanchor="right"))
    return fig


# ----------------------------------------------------------------------------- over-fitting


def _runs_list(runs) -> list[dict[str, Any]]:
    if isinstance(runs, Mapping):
        return [{"name": str(k), "history": v} for k, v in runs.items()]
    out = []
    for r in runs:
        if not isinstance(r, Mapping) or "name" not in r or "history" not in r:
            raise ValueError("each run must be a mapping with 'name' and 'history' "
                             "(and optionally 'best_step', 'stopped_step')")
        out.append(dict(r))
    return out


def _value_at(steps: np.ndarray, values: np.ndarray, at: float) -> float:
    ok = np.isfinite(values)
    if not ok.any():
        return math.nan
    s, v = steps[ok], values[ok]
    return float(v[np.argmin(np.abs(s - at))])


def overfit_curves(runs, title: str = "Train and val loss: where the curves part",
                   log_y: bool = False) -> go.Figure:
    """Train (solid) and val (dashed, points) loss of several runs on one chart, one colour per
    run, with a star where val stopped improving (its best step) and a cross where the run
    stopped.

    ``runs``: a mapping name → history DataFrame (``step``, ``train_loss``, ``val_loss``), or
    a sequence of mappings with ``name``, ``history`` and optionally ``best_step`` (default:
    the step of the lowest val loss) and ``stopped_step`` (default: the last step logged).
    """
    fig = go.Figure()
    for i, run in enumerate(_runs_list(runs)):
        name, colour = run["name"], GROUP_COLOURS[i % len(GROUP_COLOURS)]
        df = downsample_history(run["history"])
        step = _col(df, "step")
        if step is None or len(step) == 0:
            continue
        tl, vl = _col(df, "train_loss"), _col(df, "val_loss")
        if tl is not None:
            ok = np.isfinite(tl)
            fig.add_trace(go.Scatter(x=as_f32(step[ok]), y=as_f32(tl[ok]), mode="lines", name=f"{name}: train",
                                     legendgroup=name, line=dict(color=colour, width=1.5)))
        full = run["history"]
        fstep = _col(full, "step")
        fval = _col(full, "val_loss") if vl is not None else None
        if vl is not None:
            ok = np.isfinite(vl)
            fig.add_trace(go.Scatter(x=as_f32(step[ok]), y=as_f32(vl[ok]), mode="lines+markers",
                                     name=f"{name}: val", legendgroup=name,
                                     line=dict(color=colour, width=1.5, dash="dash"), marker=dict(size=6)))
        best = run.get("best_step")
        if best is None and fval is not None and np.isfinite(fval).any():
            best = float(fstep[np.nanargmin(np.where(np.isfinite(fval), fval, np.inf))])
        if best is not None and fval is not None:
            y = _value_at(fstep, fval, float(best))
            fig.add_trace(go.Scatter(
                x=as_f32([best]), y=as_f32([y]), mode="markers", legendgroup=name,
                name=f"{name}: val stopped improving (step {int(best):,})",
                marker=dict(symbol="star", size=15, color=colour, line=dict(color="white", width=1)),
                hovertemplate=f"{name}: best val loss {y:.3f} at step {int(best):,}<extra></extra>"))
        stopped = run.get("stopped_step")
        if stopped is None:
            stopped = float(np.nanmax(fstep))
        series = fval if fval is not None and np.isfinite(fval).any() else _col(full, "train_loss")
        if series is not None:
            y = _value_at(fstep, series, float(stopped))
            fig.add_trace(go.Scatter(
                x=as_f32([stopped]), y=as_f32([y]), mode="markers", legendgroup=name,
                name=f"{name}: stopped (step {int(stopped):,})",
                marker=dict(symbol="x", size=12, color=colour, line=dict(color=colour, width=1)),
                hovertemplate=f"{name}: stopped at step {int(stopped):,}<extra></extra>"))
    _layout(fig, title, height=380, legend=dict(orientation="h", y=-0.2, x=0, xanchor="left"))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="cross-entropy (nats/token)", type="log" if log_y else "linear")
    return fig


# ----------------------------------------------------------------------------- next token: model vs. bigram


def next_token_comparison(pieces: Sequence[str], p_model, p_baseline,
                          names: tuple[str, str] = ("transformer", "bigram Markov chain"),
                          title: str | None = None) -> go.Figure:
    """One context's next-token candidates, two bars each: the transformer's probability and the
    baseline's (both at temperature 1), in the order given (most likely under the baseline first).

    ``p_model`` may hold NaN for a candidate outside the transformer's kept top-k (no bar; the
    hover says so)."""
    labels = candidate_labels(list(pieces))
    m, b = as_f32(p_model).reshape(-1), as_f32(p_baseline).reshape(-1)
    if not (len(labels) == len(m) == len(b)):
        raise ValueError(f"expected one probability per candidate ({len(labels)}), got {len(m)} and {len(b)}")
    fig = go.Figure()
    fig.add_trace(go.Bar(y=labels, x=b, orientation="h", name=names[1], marker=dict(color=BASELINE_COLOURS[1]),
                         hovertemplate="%{y}<br>" + names[1] + " p %{x:.3f}<extra></extra>"))
    hover = [f"{names[0]} p {v:.3f}" if np.isfinite(v) else f"not among the {names[0]}'s top candidates"
             for v in m]
    fig.add_trace(go.Bar(y=labels, x=np.nan_to_num(m, nan=0.0).astype(np.float32), orientation="h",
                         name=names[0], marker=dict(color=PRIMARY), customdata=hover,
                         hovertemplate="%{y}<br>%{customdata}<extra></extra>"))
    _layout(fig, title, height=max(220, 26 * len(labels) + 90), barmode="group",
            legend=dict(orientation="h", y=-0.15))
    fig.update_yaxes(type="category", autorange="reversed", automargin=True)
    fig.update_xaxes(title_text="probability of the next token", rangemode="tozero")
    return fig
