"""How a model knows where a token is, drawn for one model: the similarity of its learned position
vectors (GPT-2), or what rotary positions do to a q·k score (Llama and most open models), or a note
that it has neither. The Embeddings page draws it for the active model; Compare for each side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import family_figures, figures, resources
from app.core.models import LoadedModel
from app.widgets import ui

MAX_POSITIONS = 256        # positions in the position-similarity map


def position_view(lm: LoadedModel, key: str = "emb", name: str = "") -> None:
    """The position signal of ``lm``; chart keys start with ``key``, download names with ``name``."""
    cfg = lm.config
    sim = resources.position_similarity(lm.key, _model=lm.model)
    rope = resources.rotary_profile(lm.key, _model=lm.model) if sim is None else None
    if rope is not None:
        R, Dh = int(rope["rotary_dim"]), int(rope["head_dim"])
        st.markdown("**Positions: rotary (RoPE)**")
        st.caption(f"This model learns no position vectors: positions enter inside attention, where q and k are "
                   f"rotated by an angle proportional to their position ({R} of each head's {Dh} dims, in "
                   f"{R // 2} pairs, base {cfg.rope_base:g}). A score then depends on how far apart two tokens "
                   f"are, not on where they are.")
        r1, r2 = st.tabs(["by relative distance", "frequencies"])
        with r1:
            ui.chart(family_figures.relative_distance_profile(rope["distance"], rope["score"]),
                     key=f"{key}_rope_distance", name=f"{name}rotary-relative-distance",
                     caption="The same query and key vectors (all ones on the rotated dims) placed d positions "
                             "apart: their dot product after rotation, relative to d = 0. It depends on d alone, "
                             "wherever the pair sits, and fades with distance: near tokens match more easily.")
        with r2:
            ui.chart(family_figures.rotary_wavelengths(rope["wavelength"], R, Dh, cfg.block_size),
                     key=f"{key}_rope_freq", name=f"{name}rotary-frequencies",
                     caption="Each pair of dims turns at its own speed: 2π/θᵢ positions per turn. Fast pairs "
                             "(left) tell neighbours apart; slow pairs (right, above the dashed context length) "
                             "barely turn and carry position only coarsely.")
        ui.csv_download(pd.DataFrame({"distance": rope["distance"], "score": rope["score"]}),
                        f"{name}rotary-relative-distance", key=f"{key}_rope_csv")
    elif sim is None:
        st.info("This model has no position signal at all (no learned position vectors and no rotary): only "
                "the causal mask tells a token where it is, so there is no position map to draw.",
                icon=":material/info:")
    else:
        n_pos = min(sim.shape[0], MAX_POSITIONS)
        ui.chart(figures.similarity_heatmap(sim[:n_pos, :n_pos], "Position embeddings: cosine similarity"),
                 key=f"{key}_pos", name=f"{name}position-similarity",
                 caption="Row i, column j: how similar the learned vectors of positions i and j are (red = alike, "
                         "blue = opposite). A bright band along the diagonal means nearby positions look alike."
                         + (f" The first {n_pos} of {sim.shape[0]} positions." if n_pos < sim.shape[0] else ""))
