"""Logit lens: what the model would predict if it stopped after each layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from lm_core.mechanics import layout

from app import figures, resources, state
from app.widgets import ui
from app.active import active_model

lm = active_model()
ui.page_header("Logit lens", "The residual stream after each layer, read out as if it were the last one (final "
               f"{layout(lm.config).norm_name}, then the unembedding): watch the prediction form, layer by layer, "
               "as the LLM Transparency Tool and Ecco show it.")

ui.time_travel_note(lm)

enc = ui.inspected_text(lm, height=90, help="The same text as on the Attention page.")

c1, c2 = st.columns([1, 3])
top_k = c1.slider("Guesses per cell", 1, 10, key=state.LENS_TOPK,
                  help="How many of the most likely tokens the tooltip lists for each cell.")
log_scale = c2.toggle("Colour the true-token chart by log probability", key=state.LENS_LOG,
                      help="Small probabilities become visible: each colour step is a factor of 10.")

lens = resources.logit_lens(lm.key, tuple(enc.ids), int(top_k), _model=lm.model)
rows = [("embeddings" if r == "embed" else f"after {r}") for r in lens["labels"]]
R, T = lens["top_ids"].shape[:2]
pieces_of = lm.tokenizer.pieces
top1_pieces = [pieces_of([int(i) for i in lens["top_ids"][r, :, 0]]) for r in range(R)]
hover = []
for r in range(R):
    row = []
    for t in range(T):
        ids = [int(i) for i in lens["top_ids"][r, t]]
        row.append("<br>".join(f"{figures.visible(p)} {q:.3f}"
                               for p, q in zip(pieces_of(ids), lens["top_probs"][r, t])))
    hover.append(row)

ui.chart(figures.logit_lens_heatmap(lens["top_probs"][:, :, 0], top1_pieces, rows, enc.labels, hover=hover),
         key="lens_top", name="logit-lens-top-token",
         caption="Each cell: the token the model would predict next if it stopped after that layer (rows, from "
                 "the embeddings at the top to the model's real output at the bottom), at each position "
                 "(columns: the token just read). Darker = more confident. Hover for the runners-up.")

if T > 1:
    next_pieces = pieces_of(enc.ids[1:])
    ui.chart(figures.true_next_heatmap(lens["true_p"], rows, enc.labels[:-1], next_pieces, log=log_scale),
             key="lens_true", name="logit-lens-true-next",
             caption="The probability each layer gives to the token that really comes next (hover names it). "
                     "A column that darkens from top to bottom is a prediction built up layer by layer; one that "
                     "is dark from the first rows is a guess the embeddings alone already make.")
else:
    st.info("Type at least two tokens to see how likely each true next token is.", icon=":material/info:")

# -- one position, every layer ------------------------------------------------------------------
if st.session_state.get(state.LENS_POS) not in range(T):
    st.session_state[state.LENS_POS] = T - 1
pos = st.select_slider("Position", options=list(range(T)), key=state.LENS_POS,
                       format_func=lambda i: enc.labels[i],
                       help="The table lists every layer's guesses at this position.")
table = pd.DataFrame({
    "after": rows,
    **{f"#{k + 1}": [f"{figures.visible(pieces_of([int(lens['top_ids'][r, pos, k])])[0])} "
                     f"({lens['top_probs'][r, pos, k]:.3f})" for r in range(R)]
       for k in range(lens["top_ids"].shape[2])},
})
if pos + 1 < T:
    nxt = figures.visible(pieces_of([enc.ids[pos + 1]])[0])
    table[f"p(true next '{nxt}')"] = lens["true_p"][:, pos]
    table["rank of true next"] = lens["true_rank"][:, pos] + 1
st.dataframe(table, hide_index=True, width="stretch")
st.caption(f"Every layer's {top_k} best guesses at {enc.labels[pos]}"
           + (", and the probability and rank (1 = top) of the token that really follows." if pos + 1 < T else "."))
ui.token_search(lm, state.LENS_FIND, what=f"after each layer, predicting after {enc.labels[pos]}",
                dists=lambda: dict(zip(rows, resources.logit_lens_at(lm.key, tuple(enc.ids), int(pos), _model=lm.model))))

long = pd.DataFrame({
    "after": np.repeat(rows, T), "position": np.tile(np.arange(T), R),
    "token": np.tile([figures.visible(p) for p in enc.pieces], R),
    "top_token": [figures.visible(p) for row in top1_pieces for p in row],
    "top_prob": lens["top_probs"][:, :, 0].ravel(),
    "true_next_prob": np.concatenate([np.append(lens["true_p"][r], np.nan) for r in range(R)]),
})
ui.csv_download(long, "logit-lens", key="lens_csv", label="Logit lens CSV")
