"""Surprise: the model's loss on each token of a text, beside the bigram Markov chain's."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from app import lesson_figures, resources
from app.active import active_model
from app.core import lessons
from app.core.models import corpus_spec
from app.core.text import MAX_INSPECT_TOKENS, inspect_limit
from app.widgets import ui

ui.page_header("Surprise", "Cross-entropy, the number training drives down, is the model's surprise at each true "
               "next token: −ln p(token | the tokens before it). See where the model saw a token coming, and "
               "where it did not — next to a bigram Markov chain that sees only the previous token.")

lm = active_model()
ui.time_travel_note(lm)

enc = ui.inspected_text(lm, height=110, min_tokens=2,
                        help=f"Up to {inspect_limit(lm.config)['block_size']} tokens (the model's context, at most "
                             f"{MAX_INSPECT_TOKENS} here). Press Ctrl+Enter or click outside the box to update.")
n_chars = len(lm.tokenizer.decode(enc.ids))
spec = corpus_spec(lm)
try:
    ngrams = resources.corpus_ngrams(lm.family, spec, lm.tokenizer)
    problem = None
except lessons.NoCorpus as e:
    ngrams, problem = None, str(e)

if ngrams is not None:
    cmp = resources.surprise(lm.key, lm.family, spec, tuple(enc.ids), n_chars, _model=lm.model,
                             _tokenizer=lm.tokenizer, _ngrams=ngrams)
    model, base = cmp.model, cmp.baseline
else:
    cmp, base = None, None
    model = resources.model_surprise(lm.key, tuple(enc.ids), n_chars, _model=lm.model, _tokenizer=lm.tokenizer)


def totals(s, where) -> None:
    row = where.container(horizontal=True)  # each metric as wide as its text: none is cut
    row.metric("Total surprise (nats)", f"{s.total_nats:,.1f}", width="content",
               help=f"= {s.total_bits:,.1f} bits, summed over the {len(s.losses)} predicted tokens (the first "
                    f"token has nothing before it).")
    row.metric("Loss (nats/token)", f"{s.mean_nats:.3f}", width="content",
               help="The number on the training chart: the mean over the predicted tokens.")
    row.metric("Bits per character", f"{s.bits_per_char:.3f}", width="content",
               help="Mean loss / ln 2 × tokens per character: comparable across tokenizers.")


step_txt = f" at step {lm.step:,}" if lm.step is not None else ""
zmax = float(np.nanmax(np.concatenate([model.losses, base.losses if base is not None else model.losses])))
left, right = st.columns(2)
with left:
    st.markdown(f"**Transformer**{step_txt}")
    totals(model, left)
if base is not None:
    with right:
        st.markdown(f"**{base.name.capitalize()}** (counted on the train split of `{spec}`)")
        totals(base, right)

ui.chart(lesson_figures.surprise_strip(model.pieces, model.losses, model.alternatives(),
                                       title=f"Transformer{step_txt}: loss on each token", zmax=zmax),
         key="surprise_model", name="surprise-transformer",
         caption="Each token of the text, coloured by the transformer's loss on it: light = it saw the token "
                 "coming, dark = surprised. Hover a token for its probability and what the model expected instead. "
                 "Move the sidebar's step slider to see the same text earlier in training.")
if base is not None:
    ui.chart(lesson_figures.surprise_strip(base.pieces, base.losses, base.alternatives(),
                                           title=f"{base.name.capitalize()}: loss on each token", zmax=zmax),
             key="surprise_bigram", name="surprise-bigram",
             caption="The same text scored by the bigram Markov chain (the next token from the previous one only), "
                     "on the same colour scale. Tokens dark here but light above are where the transformer's "
                     "view of the earlier context pays off.")
    best = cmp.helps_most(3)
    where = ", ".join(f"'{model.pieces[i + 1]}' (position {i + 1}, {cmp.gain[i]:+.2f} nats)" for i in best
                      if cmp.gain[i] > 0)
    ui.chart(lesson_figures.surprise_comparison(model.pieces, model.losses, base.losses),
             key="surprise_compare", name="surprise-transformer-vs-bigram",
             caption="Top: each predicted token's loss for both models. Bottom: the bigram's loss minus the "
                     "transformer's, the nats saved by looking further back (orange above zero)."
                     + (f" Most saved here: {where}." if where else ""))
    ui.csv_download(lessons.surprise_table(cmp), "surprise", key="surprise_csv", label="Per-token losses CSV")
else:
    st.caption(f":material/info: No bigram baseline beside it: {problem}.")
    ui.csv_download(lessons.surprise_table(model), "surprise", key="surprise_csv", label="Per-token losses CSV")
st.caption(f"Nats and bits: 1 nat = {1 / math.log(2):.3f} bits. Loss 0 means the model gave the true token "
           f"probability 1; ln(vocabulary size) = {math.log(lm.config.vocab_size):.2f} nats is a uniform guess.")
