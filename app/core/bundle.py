"""The export bundle: one zip with what the page shows, through ``lm_core.export.bundle_bytes``.

Contents: the model's config (and the run's training settings), the training history as CSV,
every figure the page drew as HTML and PNG (plus ``index.html``, all of them on one page that
opens offline), the activation cache of the page's text as safetensors, and ``meta.json`` /
``README.md`` saying what is inside. No Streamlit here: the sidebar (``active.py``) calls
:func:`build` when "Export bundle" is clicked and keeps the result as an :class:`ExportRecord`.
"""

from __future__ import annotations

import html
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_core import capture, export

from .models import LoadedModel

MAX_CACHE_BYTES = 64 * 2**20   # a larger activation cache keeps the residual stream and the patterns only
PNG_SCALE = 2

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class FigureRecord:
    """A figure a page drew in this run: its file name stem, the figure and its caption."""

    name: str
    figure: Any                 # plotly.graph_objects.Figure
    caption: str = ""


@dataclass
class ExportRecord:
    """The last bundle built: shown as a download button on the page it was built for."""

    page: str
    file_name: str
    data: bytes
    notes: list[str] = field(default_factory=list)


@dataclass
class Built:
    data: bytes
    file_name: str
    notes: list[str] = field(default_factory=list)   # what the user should know (PNG missing, cache cut)


def _stem(name: str) -> str:
    return _SAFE.sub("-", name).strip("-").lower() or "figure"


def _unique_names(records: Mapping[str, FigureRecord]) -> dict[str, FigureRecord]:
    """File stems for the figures, unique (a name used twice gets -2, -3, …)."""
    out: dict[str, FigureRecord] = {}
    for rec in records.values():
        stem, n = _stem(rec.name), 2
        while stem in out:
            stem = f"{_stem(rec.name)}-{n}"
            n += 1
        out[stem] = rec
    return out


def render_pngs(figs: Mapping[str, Any]) -> dict[str, bytes]:
    """Every figure as PNG in one headless-Chromium session (kaleido), which is closed afterwards.
    Raises whatever kaleido raises when no browser can be started."""
    import plotly.io as pio

    if not figs:
        return {}
    with tempfile.TemporaryDirectory() as d:
        paths = [str(Path(d) / f"{stem}.png") for stem in figs]
        pio.write_images(list(figs.values()), paths, format="png", scale=PNG_SCALE)
        return {f"{stem}.png": Path(p).read_bytes() for stem, p in zip(figs, paths)}


def index_html(title: str, records: Mapping[str, FigureRecord]) -> bytes:
    """All figures on one page with their captions; plotly.js embedded once, so it opens offline."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:Inter,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;"
             "color:#222}figure{margin:0 0 2.5em}figcaption{color:#555;font-size:14px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    first = True
    for stem, rec in records.items():
        div = rec.figure.to_html(include_plotlyjs=True if first else False, full_html=False)
        first = False
        parts.append(f"<figure id='{stem}'>{div}<figcaption><b>{html.escape(stem)}</b>: "
                     f"{html.escape(rec.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts).encode("utf-8")


def capture_cache(model, ids: list[int], max_bytes: int = MAX_CACHE_BYTES) -> tuple[dict[str, torch.Tensor], str]:
    """Every hook's activation on ``ids`` (batch 1), or, above ``max_bytes``, only the residual
    stream and the attention patterns (:func:`lm_core.capture.activation_cache`); the note says which."""
    return capture.activation_cache(model, list(ids), max_bytes)


def model_config(lm: LoadedModel) -> dict[str, Any]:
    cfg: dict[str, Any] = {"model": lm.config.to_dict(), "source": lm.label, "kind": lm.kind,
                           "tokenizer": getattr(lm.tokenizer, "kind", None)}
    if lm.run_config is not None:
        cfg["train"] = lm.run_config.train.to_dict()
        cfg["corpus"] = lm.run_config.corpus
    elif lm.corpus:
        cfg["corpus"] = lm.corpus
    if lm.step is not None:
        cfg["step"] = lm.step
    if lm.final_step is not None:
        cfg["final_step"] = lm.final_step
    return cfg


def build(lm: LoadedModel, page: str, records: Mapping[str, FigureRecord],
          text: tuple[str, list[int], list[str]] | None, png: bool = True,
          subject: Mapping[str, Any] | None = None) -> Built:
    """The bundle of ``page`` for model ``lm``: figures ``records``, the cache of ``text``
    (``(text, ids, pieces)`` or None). ``subject`` (``config``, ``history``, ``name``) replaces
    lm's config and history when the page shows another run (the Train page's). PNG rendering
    that fails leaves HTML only, said in ``notes`` and in meta.json."""
    notes: list[str] = []
    named = _unique_names(records)
    figures: dict[str, bytes] = {}
    for stem, rec in named.items():
        figures[f"{stem}.html"] = rec.figure.to_html(include_plotlyjs="cdn", full_html=True).encode("utf-8")
    if named:
        figures["index.html"] = index_html(f"LM Lens · {page} · {lm.label}", named)
    png_state = "not asked"
    if png and named:
        try:
            figures.update(render_pngs({stem: rec.figure for stem, rec in named.items()}))
            png_state = "rendered"
        except Exception as e:  # kaleido: no Chrome/Chromium, a crash, a timeout
            png_state = f"not rendered: {type(e).__name__}: {str(e).strip()[:300]}"
            notes.append("The PNG images could not be rendered (kaleido needs Chrome or Chromium; "
                         "`plotly_get_chrome` installs one), so the bundle has the figures as HTML only.")
    name = subject["name"] if subject else lm.label
    meta: dict[str, Any] = {
        "page": page, "model_name": name, "step": None if subject else lm.step,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "png": png_state,
        "html": "figures/<name>.html load plotly.js from its CDN; figures/index.html holds every figure and "
                "opens offline",
        "figures": {stem: rec.caption for stem, rec in named.items()},
    }
    cache = None
    if text is not None:
        t, ids, pieces = text
        meta.update(text=t, tokens=list(ids), pieces=list(pieces))
        cache, what = capture_cache(lm.model, list(ids))
        meta["cache"] = what
        if "only" in what:
            notes.append(f"The activation cache holds {what}.")
    else:
        meta["text"] = None
        meta["cache"] = "none: this page inspects no text"
    config = dict(subject["config"]) if subject else model_config(lm)
    history = subject["history"] if subject else lm.history
    history = history if history is not None and len(history) else None
    data = export.bundle_bytes(config=config, history=history, figures=figures, cache=cache, meta=meta)
    file_name = f"lm-lens-{_stem(page)}-{_stem(name)}-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    return Built(data=data, file_name=file_name, notes=notes)
