"""Embeddings: the geometry the model learned for tokens and positions, and the residual stream."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import figures, resources, state, ui
from app.active import active_model
from app.compute import InputProblem, encode_text

ui.page_header("Embeddings", "Each token starts as a learned vector. Tokens the model treats alike end up "
               "close together; positions get vectors too.")

lm = active_model()
cfg = lm.config
V = cfg.vocab_size
vocab_pieces = lm.tokenizer.pieces(range(V))

proj = resources.embedding_projection(lm.key, _model=lm.model)
coords, ratio = proj["coords"], proj["ratio"]
axis = [f"PC{i + 1} ({ratio[i]:.0%} of variance)" for i in range(3)]

if st.session_state.get(state.EMB_TOKEN) not in range(V):
    guess = lm.tokenizer.encode("e")
    st.session_state[state.EMB_TOKEN] = guess[0] if guess else 0

left, right = st.columns([3, 2])
with right:
    token = st.selectbox("Token", list(range(V)), key=state.EMB_TOKEN,
                         format_func=lambda i: f"{figures.visible(vocab_pieces[i])}  (id {i})",
                         help="Type to search. Its neighbours are listed below and it is highlighted on the map.")
    k = st.slider("Neighbours", 3, min(30, V - 1), key=state.EMB_K) if V > 4 else max(1, V - 1)
    ids, sims = resources.neighbours(lm.key, int(token), int(k), _model=lm.model)
    ui.chart(figures.neighbours_bar([vocab_pieces[i] for i in ids], sims,
                                    f"Closest to '{figures.visible(vocab_pieces[token])}'"),
             key="emb_nn", name=f"neighbours-{token}",
             caption="Tokens whose embedding points the same way (cosine similarity of the rows of the "
                     "embedding matrix; 1 = same direction, 0 = unrelated), closest first.")
    ui.csv_download(pd.DataFrame({"token_id": ids, "piece": [vocab_pieces[i] for i in ids], "cosine": sims}),
                    f"neighbours-{token}", key="emb_nn_csv")
with left:
    tab2, tab3 = st.tabs(["PCA 2D", "PCA 3D"])
    with tab2:
        ui.chart(figures.embedding_scatter(coords[:, :2], vocab_pieces, "Token embeddings (PCA, 2D)",
                                           highlight=[token, *ids], axis_titles=axis[:2]),
                 key="emb_pca2", name="embeddings-pca-2d",
                 caption="Every token of the vocabulary projected on the two directions along which the "
                         "embeddings vary most. Near = the model treats the tokens alike. Orange: the chosen "
                         "token and its neighbours (measured in the full space, so they may look apart here).")
    with tab3:
        ui.chart(figures.embedding_scatter(coords, vocab_pieces, "Token embeddings (PCA, 3D)",
                                           highlight=[token, *ids], axis_titles=axis),
                 key="emb_pca3", name="embeddings-pca-3d",
                 caption="The same with a third principal component; drag to rotate, scroll to zoom.")

st.divider()
p1, p2 = st.columns([2, 3])
with p1:
    ui.chart(figures.similarity_heatmap(resources.position_similarity(lm.key, _model=lm.model),
                                        "Position embeddings: cosine similarity"),
             key="emb_pos", name="position-similarity",
             caption="Row i, column j: how similar the learned vectors of positions i and j are (red = alike, "
                     "blue = opposite). A bright band along the diagonal means nearby positions look alike.")
with p2:
    text = st.text_area("Text to inspect", key=state.INSPECT_TEXT, height=80,
                        help="The same text as on the Attention page.")
    try:
        enc = encode_text(lm.tokenizer, text, cfg.block_size, keep="start", what="text to inspect")
    except InputProblem as e:
        ui.show_problem(e)
    else:
        if enc.note:
            st.warning(enc.note, icon=":material/content_cut:")
        ins = resources.inspection(lm.key, tuple(enc.ids), _model=lm.model)
        depth = ["embeddings"] + [f"after block {l}" for l in range(cfg.n_layer)]
        ui.chart(figures.residual_norms(ins["resid_norms"], depth, enc.labels),
                 key="emb_resid", name="residual-norms",
                 caption="Length (L2 norm) of the residual stream at each token, from the embeddings (top) "
                         "through each block (down). Each block adds its attention and MLP output to it.")
