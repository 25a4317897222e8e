"""Embeddings: the geometry the model learned for tokens and positions, and the residual stream."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import figures, resources, state
from app.core import vocab
from app.widgets import ui
from app.widgets.positions import position_view
from app.active import active_model, base_model

MAX_PICKER_VOCAB = 5000    # above this, a token is typed rather than picked from a list
MAX_POINTS = 3000          # tokens drawn on the map (GPT-2 has 50,257: the map would be megabytes)

ui.page_header("Embeddings", "Each token starts as a learned vector. Tokens the model treats alike end up "
               "close together; positions get vectors too (or, in a rotary model, an angle).")

lm = active_model()
cfg = lm.config
V = cfg.vocab_size
ui.time_travel_note(lm)
pieces_of = lm.tokenizer.pieces

# Time travel: each step's PCA is rotated onto the latest weights' own, so points do not jump.
base = base_model()
if lm.key != base.key and (base.config.vocab_size, base.config.n_embd) == (V, cfg.n_embd):
    proj = resources.embedding_projection(lm.key, _model=lm.model, reference_key=base.key, _reference=base.model)
else:
    proj = resources.embedding_projection(lm.key, _model=lm.model)
coords, coords2, ratio = proj["coords"], proj["coords2"], proj["ratio"]
aligned = bool(proj["aligned"])
if aligned:
    axis = [f"PC{i + 1} of step {base.step:,} (aligned)" for i in range(3)]
else:
    axis = [f"PC{i + 1} ({ratio[i]:.0%} of variance)" for i in range(3)]

if st.session_state.get(state.EMB_TOKEN) not in range(V):
    guess = lm.tokenizer.encode("e")
    st.session_state[state.EMB_TOKEN] = guess[0] if guess else 0

left, right = st.columns([3, 2])
with right:
    if V <= MAX_PICKER_VOCAB:
        vocab_pieces = pieces_of(range(V))
        token = st.selectbox("Token", list(range(V)), key=state.EMB_TOKEN,
                             format_func=lambda i: f"{figures.visible(vocab_pieces[i])}  (id {i})",
                             help="Type to search. Its neighbours are listed below and it is highlighted on the map.")
    else:
        word = st.text_input("Token", key=state.EMB_WORD, placeholder="a token, e.g. ␣the, or #id",
                             help=f"This vocabulary has {V:,} tokens: type a token (␣ or a space for the space) "
                                  f"and pick among the matches.")
        if word:
            vocab_pieces = resources.vocab_pieces(lm.key, _tokenizer=lm.tokenizer)
            matches = vocab.find_tokens(word, vocab_pieces, lm.tokenizer)
            if matches:
                st.session_state[state.EMB_TOKEN] = st.selectbox(
                    "Matching tokens", matches, key=state.EMB_MATCH,
                    format_func=lambda i: f"{figures.visible(vocab_pieces[i])}  (id {i})",
                    help="Exact pieces first, then the tokens your text encodes to, then pieces containing it.")
            else:
                st.warning("No token matches that text; type a shorter piece, or #id.", icon=":material/warning:")
        token = int(st.session_state[state.EMB_TOKEN])
        st.caption(f"Token '{figures.visible(pieces_of([token])[0])}' (id {token}).")
    k = st.slider("Neighbours", 3, min(30, V - 1), key=state.EMB_K) if V > 4 else max(1, V - 1)
    ids, sims = resources.neighbours(lm.key, int(token), int(k), _model=lm.model)
    ui.chart(figures.neighbours_bar(pieces_of(ids), sims, f"Closest to '{figures.visible(pieces_of([token])[0])}'"),
             key="emb_nn", name=f"neighbours-{token}",
             caption="Tokens whose embedding points the same way (cosine similarity of the rows of the "
                     "embedding matrix; 1 = same direction, 0 = unrelated), closest first.")
    ui.csv_download(pd.DataFrame({"token_id": ids, "piece": pieces_of(ids), "cosine": sims}),
                    f"neighbours-{token}", key="emb_nn_csv")

# The map draws all of a small vocabulary; of a large one the first MAX_POINTS ids (byte-level
# BPE numbers its merges by frequency, so these are the common tokens), the chosen token and its
# neighbours.
if V <= MAX_POINTS:
    shown = np.arange(V)
else:
    shown = np.array(sorted(set(range(MAX_POINTS)) | {int(token)} | {int(i) for i in ids}))
shown_pieces = pieces_of([int(i) for i in shown])
index_of = {int(t): i for i, t in enumerate(shown)}
highlight = [index_of[int(t)] for t in [token, *ids] if int(t) in index_of]
notes = ""
if V > MAX_POINTS:
    notes += (f" Of the {V:,} tokens, the first {MAX_POINTS:,} ids (for byte-level BPE, the most frequent merges) "
              f"are drawn, plus the chosen token and its neighbours.")
if aligned:
    notes += (f" Time travel: the coordinates are rotated (Procrustes) onto the projection of the latest weights "
              f"(step {base.step:,}), so a token keeps its place as you move between steps.")
with left:
    tab2, tab3 = st.tabs(["PCA 2D", "PCA 3D"])
    with tab2:
        ui.chart(figures.embedding_scatter(coords2[shown], shown_pieces, "Token embeddings (PCA, 2D)",
                                           highlight=highlight, axis_titles=axis[:2]),
                 key="emb_pca2", name="embeddings-pca-2d",
                 caption="Every token of the vocabulary projected on the two directions along which the "
                         "embeddings vary most. Near = the model treats the tokens alike. Orange: the chosen "
                         "token and its neighbours (measured in the full space, so they may look apart here)."
                         + notes)
    with tab3:
        ui.chart(figures.embedding_scatter(coords[shown], shown_pieces, "Token embeddings (PCA, 3D)",
                                           highlight=highlight, axis_titles=axis),
                 key="emb_pca3", name="embeddings-pca-3d",
                 caption="The same with a third principal component; drag to rotate, scroll to zoom.")

st.divider()
p1, p2 = st.columns([2, 3])
with p1:
    position_view(lm)
with p2:
    enc = ui.inspected_text(lm, height=80, help="The same text as on the Attention page.", stop=False)
    if enc is not None:
        ins = resources.inspection(lm.key, tuple(enc.ids), _model=lm.model)
        depth = ["embeddings"] + [f"after block {l}" for l in range(cfg.n_layer)]
        ui.chart(figures.residual_norms(ins["resid_norms"], depth, enc.labels),
                 key="emb_resid", name="residual-norms",
                 caption="Length (L2 norm) of the residual stream at each token, from the embeddings (top) "
                         "through each block (down). Each block adds its attention and MLP output to it.")
