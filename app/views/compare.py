"""Compare: two weight snapshots of a run (or two runs of the same shape) on the same text."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import figures, resources, state
from app.active import PRETRAINED_CHOICE, at_step, resolve, source_options, step_options
from app.core.text import InputProblem, encode_text, inspect_limit
from app.widgets import ui
from app.widgets.positions import position_view

ui.page_header("Compare", "Two training steps of a run, or two runs, side by side on the same text: one head's "
               "attention in each and where they differ, and how well each predicts the text.")

options, labels, _ = source_options()
ss = st.session_state
current = state.model_choice()
for key in (state.CMP_A, state.CMP_B):
    if ss.get(key) not in options:
        ss[key] = current if current in options else options[0]


def _side(col, name: str, key: str, step_key: str, earliest: bool):
    """One side's model and step pickers; returns its model at that step (or None and a reason)."""
    with col:
        choice = st.selectbox(f"{name}: model", options, key=key, format_func=lambda o: labels.get(o, o))
        lm, problem = resolve(choice)
        if choice == PRETRAINED_CHOICE and not state.get(state.PRETRAINED_LOADED):
            problem = "No pretrained model is loaded yet: pick it in the sidebar's Model list, type a name and press Load."
        if problem:
            st.warning(f"{problem} The default model stands in.", icon=":material/warning:")
        steps = step_options(lm)
        if len(steps) > 1:
            if ss.get(step_key) not in steps:
                ss[step_key] = steps[0] if earliest else steps[-1]
            step = st.select_slider(f"{name}: weights at step", options=steps, key=step_key,
                                    format_func=lambda s: f"{s:,}")
            lm, problem = at_step(lm, int(step))
            if problem:
                st.warning(problem, icon=":material/warning:")
        else:
            st.caption("This model has no weight snapshots: its latest weights are used.")
        st.caption(lm.describe())
        return lm


ca, cb = st.columns(2)
lm_a = _side(ca, "A", state.CMP_A, state.CMP_A_STEP, earliest=True)
lm_b = _side(cb, "B", state.CMP_B, state.CMP_B_STEP, earliest=False)
name_a = f"A · step {lm_a.step:,}" if lm_a.step is not None else "A"
name_b = f"B · step {lm_b.step:,}" if lm_b.step is not None else "B"
if lm_a.key == lm_b.key:
    st.info("A and B are the same weights: pick another step (or model) for one side to see a difference.",
            icon=":material/info:")

text = st.text_area("Text to inspect", key=state.INSPECT_TEXT, height=90, help="The same text as on the Attention page.")
try:
    small = lm_a.config if lm_a.config.block_size <= lm_b.config.block_size else lm_b.config
    enc = encode_text(lm_a.tokenizer, text, **inspect_limit(small), keep="start", what="text to inspect")
    enc_b = encode_text(lm_b.tokenizer, text, **inspect_limit(small), keep="start", what="text to inspect")
except InputProblem as e:
    ui.show_problem(e)
    st.stop()
if enc.ids != enc_b.ids:
    st.error("A and B read this text as different tokens (their tokenizers differ), so their attention and "
             "predictions cannot be lined up. Compare two steps of one run, or two runs trained with the same "
             "tokenizer on the same corpus.", icon=":material/error:")
    st.stop()
if enc.note:
    st.warning(enc.note, icon=":material/content_cut:")
state.set_export_text(text, enc.ids, enc.pieces)
T = len(enc.ids)

# -- attention --------------------------------------------------------------------------------------
ca_cfg, cb_cfg = lm_a.config, lm_b.config
if (ca_cfg.n_layer, ca_cfg.n_head) != (cb_cfg.n_layer, cb_cfg.n_head):
    st.warning(f"A has {ca_cfg.n_layer} layers × {ca_cfg.n_head} heads and B {cb_cfg.n_layer} × {cb_cfg.n_head}: "
               f"their heads do not correspond, so only the predictions are compared. Pick two runs of the same "
               f"shape to compare attention.", icon=":material/warning:")
else:
    L, H = ca_cfg.n_layer, ca_cfg.n_head
    if ss.get(state.CMP_LAYER, 0) >= L:
        ss[state.CMP_LAYER] = 0
    if ss.get(state.CMP_HEAD, 0) >= H:
        ss[state.CMP_HEAD] = 0
    s1, s2, _ = st.columns([1, 1, 4])
    layer = s1.selectbox("Layer", list(range(L)), key=state.CMP_LAYER)
    head = s2.selectbox("Head", list(range(H)), key=state.CMP_HEAD)
    ins_a = resources.inspection(lm_a.key, tuple(enc.ids), _model=lm_a.model)
    ins_b = resources.inspection(lm_b.key, tuple(enc.ids), _model=lm_b.model)
    pa, pb = ins_a["patterns"][layer, head], ins_b["patterns"][layer, head]
    h1, h2, h3 = st.columns(3)
    with h1:
        ui.chart(figures.attention_heatmap(pa, enc.labels, title=f"{name_a}: layer {layer}, head {head}", height=420),
                 key="cmp_attn_a", name=f"compare-a-L{layer}-H{head}",
                 caption="A's attention: rows are queries, columns the keys they attend to; each row sums to 1.")
    with h2:
        ui.chart(figures.attention_heatmap(pb, enc.labels, title=f"{name_b}: layer {layer}, head {head}", height=420),
                 key="cmp_attn_b", name=f"compare-b-L{layer}-H{head}",
                 caption="B's attention, same axes and colours.")
    with h3:
        ui.chart(figures.attention_difference(pa, pb, enc.labels, f"B − A, layer {layer}, head {head}",
                                              names=(name_a, name_b)),
                 key="cmp_attn_diff", name=f"compare-diff-L{layer}-H{head}",
                 caption="Red: B attends more than A there; blue: less. Each row of the difference sums to 0 "
                         f"(largest change here: {np.nanmax(np.abs(pb - pa)):.3f}).")

# -- positions --------------------------------------------------------------------------------------
differ = ca_cfg.pos != cb_cfg.pos
with st.expander("Positions: how A and B know where a token is"
                 + (f" (A: {ca_cfg.pos}, B: {cb_cfg.pos})" if differ else ""), expanded=differ):
    if differ:
        st.caption("A learned position table (GPT-2) gives each position a vector added to the token's; rotary "
                   "positions (Llama) give none, and turn q and k by an angle instead, so attention sees only "
                   "how far apart two tokens are. Trained on the same text, both learn to use nearby tokens.")
    pa_col, pb_col = st.columns(2)
    with pa_col:
        position_view(lm_a, key="cmp_a", name="compare-a-")
    with pb_col:
        position_view(lm_b, key="cmp_b", name="compare-b-")

# -- predictions ------------------------------------------------------------------------------------
pred = resources.compare_predictions(lm_a.key, lm_b.key, tuple(enc.ids), _model_a=lm_a.model, _model_b=lm_b.model)
if T < 2:
    st.info("Type at least two tokens to compare how well A and B predict the text.", icon=":material/info:")
    st.stop()
m = st.container(horizontal=True)  # each metric as wide as its label: none is cut
m.metric(f"Loss on this text, {name_a}", f"{pred['loss_a']:.4f}", width="content")
diff = pred["loss_b"] - pred["loss_a"]
m.metric(f"Loss on this text, {name_b}", f"{pred['loss_b']:.4f}", width="content",
          delta=f"{diff:+.4f}" if abs(diff) >= 5e-5 else None,  # equal sides: no red "↑ +0.0000"
          delta_color="inverse", help="Mean cross-entropy of each next token, nats; the delta is B − A.")
if ss.get(state.CMP_POS) not in range(T - 1):
    ss[state.CMP_POS] = T - 2
pos = st.select_slider("Predicting after", options=list(range(T - 1)), key=state.CMP_POS,
                       format_func=lambda i: enc.labels[i])
cand = pred["cand_ids"][pos]
n = min(12, int((cand >= 0).sum()))
ids = [int(i) for i in cand[:n]]
true_next = enc.ids[pos + 1]
hl = ids.index(true_next) if true_next in ids else None
ui.chart(figures.before_after_bar(figures.candidate_labels(lm_a.tokenizer.pieces(ids)), pred["p_a"][pos, :n],
                                  pred["p_b"][pos, :n], f"Next token after {enc.labels[pos]}",
                                  names=(name_a, name_b), highlight=hl),
         key="cmp_next", name=f"compare-next-token-{pos}",
         caption="The likeliest next tokens under A (grey) and B (blue)"
                 + ("; orange: the token that really comes next" if hl is not None else "") +
                 f". p(true next) goes from {np.exp(-pred['nll_a'][pos]):.3f} (A) to {np.exp(-pred['nll_b'][pos]):.3f} (B).")
ui.token_search(lm_a, state.CMP_FIND, what=f"after {enc.labels[pos]} under A and B",
                dists=lambda: {name_a: resources.next_token_probs(lm_a.key, tuple(enc.ids[: pos + 1]), _model=lm_a.model),
                               name_b: resources.next_token_probs(lm_b.key, tuple(enc.ids[: pos + 1]), _model=lm_b.model)})
