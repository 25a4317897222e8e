"""Export bundles: one zip with everything needed to share or revisit what was on screen.

A bundle holds ``config.json``, ``history.csv``, figures (HTML and PNG, as the caller renders
them), the activation cache of the current text as ``cache.safetensors``, ``meta.json`` (the
text, tokens, what each file is) and a ``README.md`` describing the contents. Nothing in it is
a pickle: :func:`read_bundle` reads it back with JSON, CSV and safetensors parsers only.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .atomic import atomic_write_bytes

FIGURE_SUFFIXES = (".html", ".png", ".svg", ".json")


@dataclass
class Bundle:
    """What :func:`read_bundle` returns."""

    config: dict[str, Any]
    history: pd.DataFrame | None
    figures: dict[str, bytes]
    cache: dict[str, torch.Tensor]
    meta: dict[str, Any]
    readme: str
    files: list[str] = field(default_factory=list)


def _readme(meta: dict[str, Any], files: list[str]) -> str:
    lines = [
        "# LM Lens export",
        "",
        f"Model: {meta.get('model_name', 'unnamed')}",
    ]
    if meta.get("text") is not None:
        lines += ["", "Text inspected:", "", "```", str(meta["text"]), "```"]
    lines += [
        "",
        "## Files",
        "",
        "- `config.json`: the model configuration (GPT-2 names: n_layer, n_head, n_embd, block_size, …)"
        " and, for a trained run, its training settings.",
        "- `history.csv`: one row per logged training step (train/val loss, learning rate, tokens/s,"
        " gradient norm and update/weight ratio per layer).",
        "- `cache.safetensors`: activations of the inspected text, keyed by TransformerLens hook name"
        " (e.g. `blocks.0.attn.hook_pattern`, shape [batch, head, query, key]). Load with"
        " `safetensors.torch.load_file`.",
        "- `figures/`: the figures on screen, as interactive HTML (open in a browser) and PNG.",
        "- `meta.json`: the text, its token ids and pieces, and when and with what this was exported.",
        "",
        "Contents:",
        "",
    ]
    lines += [f"- `{f}`" for f in files]
    return "\n".join(lines) + "\n"


def bundle_bytes(
    *,
    config: Mapping[str, Any],
    history: pd.DataFrame | None = None,
    figures: Mapping[str, bytes] | None = None,
    cache: Mapping[str, torch.Tensor] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> bytes:
    """The bundle as zip bytes (for a download button; :func:`write_bundle` saves them).

    ``figures`` maps a file name (``attention.html``, ``attention.png``) to its bytes; names
    must end in one of :data:`FIGURE_SUFFIXES`. ``cache`` maps hook names to tensors.
    """
    figures = dict(figures or {})
    for name in figures:
        if "/" in name or "\\" in name or not name.endswith(FIGURE_SUFFIXES):
            raise ValueError(f"figure file name {name!r} must be a plain name ending in one of {FIGURE_SUFFIXES}")
    files = ["config.json", "meta.json", "README.md"]
    if history is not None:
        files.append("history.csv")
    if cache:
        files.append("cache.safetensors")
    files += [f"figures/{n}" for n in sorted(figures)]
    meta = {"format": "lm-lens-bundle", "version": 1, **dict(meta or {})}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps(dict(config), indent=2, default=str))
        z.writestr("meta.json", json.dumps(meta, indent=2, default=str))
        z.writestr("README.md", _readme(meta, files))
        if history is not None:
            z.writestr("history.csv", history.to_csv(index=False))
        if cache:
            # clone: some activations share storage (resid_post[l] is resid_pre[l+1]), which
            # safetensors refuses to write
            tensors = {k: v.detach().cpu().clone().contiguous() for k, v in cache.items()}
            z.writestr("cache.safetensors", st_save(tensors))
        for name in sorted(figures):
            z.writestr(f"figures/{name}", figures[name])
    return buf.getvalue()


def write_bundle(dest: str | os.PathLike, **kwargs) -> Path:
    """Write a zip bundle atomically to ``dest`` and return its path.

    Keyword arguments as :func:`bundle_bytes`; the zip is built before the file is touched.
    """
    dest = Path(dest)
    atomic_write_bytes(dest, bundle_bytes(**kwargs))
    return dest


def read_bundle(path: str | os.PathLike | bytes) -> Bundle:
    """Read a bundle written by :func:`write_bundle` (no pickle: JSON, CSV and safetensors)."""
    src = io.BytesIO(path) if isinstance(path, bytes) else path
    name = "the bundle" if isinstance(path, bytes) else str(path)
    try:
        z = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{name} is not a readable zip file ({e})") from None
    with z:
        files = z.namelist()
        if "meta.json" not in files or "config.json" not in files:
            raise ValueError(f"{name} is not an LM Lens bundle: meta.json or config.json is missing")
        try:
            meta = json.loads(z.read("meta.json"))
            config = json.loads(z.read("config.json"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: meta.json or config.json is not valid JSON ({e})") from None
        if meta.get("format") != "lm-lens-bundle":
            raise ValueError(f"{name} is not an LM Lens bundle (meta.json has format {meta.get('format')!r})")
        history = pd.read_csv(io.BytesIO(z.read("history.csv"))) if "history.csv" in files else None
        cache = st_load(z.read("cache.safetensors")) if "cache.safetensors" in files else {}
        figures = {f.split("/", 1)[1]: z.read(f) for f in files if f.startswith("figures/")}
        readme = z.read("README.md").decode("utf-8") if "README.md" in files else ""
    return Bundle(config=config, history=history, figures=figures, cache=cache, meta=meta, readme=readme, files=files)
