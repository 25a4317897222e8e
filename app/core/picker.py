"""The pretrained-model picker's facts: what a model is, what it costs, whether it is here. No Streamlit.

For a curated model (:data:`lm_core.catalog.CATALOG`) everything is known with no network; for
another hub name only its ``config.json`` is fetched; a local folder is read where it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lm_core import catalog, hub
from lm_core.catalog import ModelFacts

OTHER = "other"   # the picker's "another hub name or local folder" choice


def is_folder(name: str) -> bool:
    """True when ``name`` is an existing local folder (loaded in place, nothing downloaded)."""
    return bool(name) and Path(name).expanduser().is_dir()


def model_facts(name: str) -> ModelFacts:
    """The :class:`ModelFacts` of a curated name, a local folder (its ``config.json``) or any hub
    name (its ``config.json`` only: cached, else one small download). ``ValueError`` saying why not."""
    name = (name or "").strip()
    if not name:
        raise ValueError("type a hub name such as 'gpt2' or a folder")
    entry = catalog.catalog_entry(name)
    if entry is not None:
        return catalog.facts(name, entry.config, entry.download_bytes)
    if is_folder(name):
        f = Path(name).expanduser() / "config.json"
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"the folder has no readable config.json ({e})") from None
        if not isinstance(cfg, dict):
            raise ValueError("the folder's config.json does not hold a JSON object")
        return catalog.facts(name, cfg, 0)
    if name.startswith(("/", "./", "../", "~", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"folder {name!r} does not exist")
    return catalog.facts(name, hub.fetch_config(name))


def _size(n_bytes: float) -> str:
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GB"
    return f"{n_bytes / 2**20:.0f} MB" if n_bytes >= 2**20 else f"{max(1, round(n_bytes / 2**10))} KB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


@dataclass(frozen=True)
class Card:
    """What the picker shows about a model, as short lines of Markdown."""

    size: str        # "124 M parameters · 12 layers × 12 heads · width 768 · download 550 MB"
    layout: str      # "LayerNorm · learned position embedding · GELU MLP · multi-head (12 key/value heads)"
    cost: str        # "Estimate: about 0.6 GB of memory (1.5 GB while loading) and 1.2 s per inspection …"
    slow: bool


def card(facts: ModelFacts, flops_per_s: float, folder: bool = False) -> Card:
    """The picker's lines for ``facts``, with an :func:`lm_core.catalog.estimate` on this machine."""
    c = facts.config
    entry = catalog.catalog_entry(facts.name)
    if folder:
        dl = "a local folder: nothing to download"
    else:
        dl = f"download {'about ' if not facts.download_known else ''}{_size(facts.download_bytes)}"
    size = (f"**{_params(facts.n_params)} parameters** · {c.n_layer} layers × {c.n_head} heads · width {c.n_embd} · "
            f"context {c.block_size:,} · vocabulary {c.vocab_size:,} · {dl}")
    layout = f"{facts.layout} ({c.kv_heads} key/value heads)"
    est = catalog.estimate(c, flops_per_s, dtype=facts.dtype)
    cost = (f"Estimate: about {_size(est.resident_bytes)} of memory ({_size(est.load_peak_bytes)} while loading) and "
            f"{_seconds(est.seconds)} per inspection of {est.tokens} tokens on this machine — worked out from the "
            f"parameter count, not measured on the model.")
    slow = (entry is not None and entry.slow) or est.seconds > 5 or est.load_peak_bytes > 8 * 2**30
    return Card(size, layout, cost, slow)


def _seconds(s: float) -> str:
    if s < 0.001:
        return "under 1 ms"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s" if s < 90 else f"{s / 60:.0f} min"


def cached(name: str, revision: str | None = None) -> bool:
    """True when ``name`` (at ``revision``) is loadable from the local Hugging Face cache."""
    return hub.cached_snapshot(name, revision) is not None
