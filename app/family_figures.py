"""Figures for what differs between model families: rotary positions (frequencies per dimension
pair, attention by relative distance, the angles of the chosen positions) and the norm's scale per
token. Arrays in, Plotly figures out, the conventions of :mod:`app.figures`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from .figures import ACCENT, PRIMARY, _layout, as_f32, colorscale

__all__ = ["rotary_wavelengths", "relative_distance_profile", "rotary_angles", "norm_scale_bar"]


def rotary_wavelengths(wavelength, rotary_dim: int, head_dim: int, block_size: int) -> go.Figure:
    """One bar per rotated pair ``(i, i + R/2)``: how many positions it takes to turn once (log y).
    A dashed line marks the context length: pairs above it never complete a turn inside it."""
    w = as_f32(wavelength)
    half = rotary_dim // 2
    labels = [f"{i}·{i + half}" for i in range(len(w))]
    fig = go.Figure(go.Bar(x=labels, y=w, marker=dict(color=PRIMARY),
                           hovertemplate="dims %{x}<br>one turn every %{y:.3g} positions<extra></extra>"))
    fig.add_hline(y=block_size, line=dict(color=ACCENT, dash="dash"),
                  annotation_text=f"context ({block_size})", annotation_position="top left")
    _layout(fig, f"Rotary frequencies: {rotary_dim} of {head_dim} dims per head rotate", height=320)
    fig.update_xaxes(title_text="dimension pair", type="category", tickangle=-45 if len(w) > 16 else 0)
    fig.update_yaxes(title_text="wavelength (positions)", type="log")
    return fig


def relative_distance_profile(distance, score, title: str = "Score of a fixed q·k by relative distance") -> go.Figure:
    """``score [N]`` against ``distance [N]``: the attention score a rotary model gives the same
    query and key vectors placed ``distance`` positions apart (1 at distance 0)."""
    d, s = np.asarray(distance), as_f32(score)
    fig = go.Figure(go.Scatter(x=d, y=s, mode="lines+markers" if len(d) <= 64 else "lines",
                               line=dict(color=PRIMARY), marker=dict(size=4),
                               hovertemplate="distance %{x}<br>score %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0.0, line=dict(color="#9aa5b1", width=1))
    _layout(fig, title, height=320)
    fig.update_xaxes(title_text="key is this many positions before the query")
    fig.update_yaxes(title_text="q·k relative to distance 0")
    return fig


def rotary_angles(angles, labels: Sequence[str], rotary_dim: int) -> go.Figure:
    """``angles [T, R/2]``: the angle (radians, shown modulo 2π) by which each position turns each
    rotated pair of q and k."""
    a = np.mod(as_f32(angles), 2 * np.pi).astype(np.float32)
    half = rotary_dim // 2
    cols = [f"{i}·{i + half}" for i in range(a.shape[1])]
    fig = go.Figure(go.Heatmap(z=a, x=cols, y=list(labels), colorscale=colorscale("weight"), zmin=0.0,
                               zmax=float(2 * np.pi), colorbar=dict(title=dict(text="rad"), thickness=10),
                               hovertemplate="%{y} · pair %{x}<br>angle %{z:.3f} rad<extra></extra>"))
    _layout(fig, "Rotation angle m·θᵢ (mod 2π)", height=max(200, 22 * len(labels) + 110))
    fig.update_xaxes(title_text="dimension pair", type="category")
    fig.update_yaxes(title_text="token (position m)", type="category", autorange="reversed", automargin=True)
    return fig


def norm_scale_bar(scale, labels: Sequence[str], norm_name: str) -> go.Figure:
    """The norm's divisor per token: the standard deviation (LayerNorm) or the root mean square
    (RMSNorm) of each token's residual vector."""
    v = as_f32(scale)
    what = "RMS" if norm_name == "RMSNorm" else "standard deviation"
    fig = go.Figure(go.Bar(x=list(labels), y=v, marker=dict(color=PRIMARY),
                           hovertemplate="%{x}<br>" + what + " %{y:.4f}<extra></extra>"))
    _layout(fig, f"{norm_name}: each token is divided by its {what}", height=300)
    fig.update_xaxes(title_text="token", type="category")
    fig.update_yaxes(title_text=what)
    return fig
