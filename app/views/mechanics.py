"""Mechanics: the transformer's arithmetic, step by step, with this model's real numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import figures, resources, state
from app.active import active_model
from app.core.text import InputProblem, encode_text
from app.widgets import ui

MAX_TOKENS = 16  # a short input keeps every matrix readable

ui.page_header("Mechanics", "From token ids to the probability of the next token, and how training changes "
               "the weights — every number below is computed by the active model.")

lm = active_model()
cfg = lm.config
ui.time_travel_note(lm)
D, H, Dh = cfg.n_embd, cfg.n_head, cfg.head_dim

c1, c2, c3 = st.columns([4, 1, 1])
text = c1.text_input("Short input", key=state.MECH_TEXT, help=f"At most {MAX_TOKENS} tokens are used.")
if st.session_state.get(state.MECH_LAYER, 0) >= cfg.n_layer:
    st.session_state[state.MECH_LAYER] = 0
if st.session_state.get(state.MECH_HEAD, 0) >= H:
    st.session_state[state.MECH_HEAD] = 0
layer = c2.selectbox("Layer", list(range(cfg.n_layer)), key=state.MECH_LAYER)
head = c3.selectbox("Head", list(range(H)), key=state.MECH_HEAD)

tab_fwd, tab_train = st.tabs(["Forward pass", "Training loop"])

with tab_fwd:
    try:
        enc = encode_text(lm.tokenizer, text, min(MAX_TOKENS, cfg.block_size), keep="start", what="short input")
    except InputProblem as e:
        ui.show_problem(e)
        enc = None
    if enc is not None:
        if enc.note:
            st.warning(enc.note, icon=":material/content_cut:")
        state.set_export_text(text, enc.ids, enc.pieces)
        w = resources.walkthrough(lm.key, tuple(enc.ids), int(layer), int(head), _model=lm.model)
        labels = enc.labels
        T = len(labels)
        dims = [str(i) for i in range(D)]
        hdims = [str(i) for i in range(Dh)]

        def step(n: int, title: str, formula: str, explain: str):
            box = st.container(border=True)
            a, b = box.columns([1, 2.4])
            a.markdown(f"**{n}. {title}**")
            a.latex(formula)
            a.caption(explain)
            return b

        fig_col = step(1, "Token ids", r"\text{text} \rightarrow (t_0, \dots, t_{T-1})",
                       f"The tokenizer ({lm.tokenizer.kind}) cuts the text into {T} tokens; each is an id into "
                       f"the vocabulary of {cfg.vocab_size}.")
        with fig_col:
            ui.token_strip(enc.pieces, enc.ids)
            st.dataframe(pd.DataFrame([[figures.visible(p) for p in enc.pieces], [str(i) for i in enc.ids]],
                                      index=["token", "id"], columns=[str(i) for i in range(T)]),
                         width="stretch")

        fig_col = step(2, "Embedding + position", r"x_i = W_E[t_i] + W_P[i]",
                       "Each id picks a row of the token embedding; each position a row of the position "
                       f"embedding; their sum (width {D}) starts the residual stream."
                       + ("" if layer == 0 else f" Below: the input of block {layer}, after the blocks before it."))
        with fig_col:
            if layer == 0:
                t1, t2, t3 = st.tabs(["token embedding", "position embedding", "sum x"])
                for tab, key, title in ((t1, "tok_embed", "W_E[t]"), (t2, "pos_embed", "W_P[i]"), (t3, "resid_pre", "x")):
                    with tab:
                        ui.chart(figures.matrix_heatmap(w[key], labels, dims, title, row_title="token",
                                                        col_title="dimension"),
                                 key=f"mech_{key}", name=f"mechanics-{key}",
                                 caption="Rows: tokens; columns: embedding dimensions; red positive, blue negative.")
            else:
                ui.chart(figures.matrix_heatmap(w["resid_pre"], labels, dims, f"x: input of block {layer}",
                                                row_title="token", col_title="dimension"),
                         key="mech_resid_pre", name="mechanics-resid-pre",
                         caption="Rows: tokens; columns: dimensions of the residual stream; red positive, blue negative.")

        fig_col = step(3, "Q, K, V", r"\begin{aligned} Q &= \mathrm{LN}(x)\,W_Q + b_Q \\ K &= \mathrm{LN}(x)\,W_K + b_K \\ V &= \mathrm{LN}(x)\,W_V + b_V \end{aligned}",
                       f"The block first normalises x (LayerNorm), then head {head} projects it to a query, "
                       f"a key and a value of width d_k = {Dh} per token.")
        with fig_col:
            qc = st.columns(3)
            for col, key in zip(qc, ("q", "k", "v")):
                with col:
                    ui.chart(figures.matrix_heatmap(w[key], labels, hdims, key.upper(), row_title="token",
                                                    col_title="dimension", height=max(220, 20 * T + 100)),
                             key=f"mech_{key}", name=f"mechanics-{key}",
                             caption=f"{key.upper()}: one row per token, {Dh} columns.")

        fig_col = step(4, "Scores", r"S = \frac{Q K^\top}{\sqrt{d_k}}",
                       f"Each query row is compared with every key by a dot product, scaled by 1/√{Dh} "
                       f"= {w['scale']:.3f} so the softmax does not saturate.")
        with fig_col:
            ui.chart(figures.matrix_heatmap(w["scaled"], labels, labels, "QKᵀ/√d_k", row_title="query",
                                            col_title="key", show_values=T <= 12),
                     key="mech_scaled", name="mechanics-scores",
                     caption="Rows: queries; columns: keys; red = the query matches the key well.")

        fig_col = step(5, "Causal mask", r"S_{ij} = -\infty \text{ for } j > i",
                       "A token may not look at the future: scores right of the diagonal become −∞ (blank).")
        with fig_col:
            ui.chart(figures.matrix_heatmap(w["masked"], labels, labels, "masked scores", row_title="query",
                                            col_title="key", show_values=T <= 12),
                     key="mech_masked", name="mechanics-masked",
                     caption="Same as above with the future blanked out.")

        fig_col = step(6, "Softmax", r"A_{ij} = \frac{e^{S_{ij}}}{\sum_{k \le i} e^{S_{ik}}}",
                       "Each row becomes a probability distribution over the visible keys: the attention pattern.")
        with fig_col:
            ui.chart(figures.matrix_heatmap(w["pattern"], labels, labels, "attention pattern A", kind="weight",
                                            zrange=(0.0, 1.0), row_title="query", col_title="key",
                                            show_values=T <= 12),
                     key="mech_pattern", name="mechanics-pattern",
                     caption="Rows sum to 1; darker = more attention (the same picture as on the Attention page).")

        fig_col = step(7, "Weighted sum of V", r"z_i = \sum_j A_{ij}\, V_j",
                       "Each query gathers the values of the tokens it attends to, weighted by the pattern.")
        with fig_col:
            ui.chart(figures.matrix_heatmap(w["z"], labels, hdims, "z = A·V", row_title="token",
                                            col_title="dimension"),
                     key="mech_z", name="mechanics-z",
                     caption=f"One row per token: head {head}'s output, {Dh} numbers.")

        fig_col = step(8, "Output projection", r"\mathrm{attn}(x) = \sum_h z^{(h)} W_O^{(h)} + b_O",
                       f"Each head's z is mapped back to width {D}; the {H} heads' outputs are added "
                       f"(plus a bias) to the residual stream: x ← x + attn(x).")
        with fig_col:
            a1, a2 = st.tabs([f"head {head}'s contribution", "all heads summed"])
            with a1:
                ui.chart(figures.matrix_heatmap(w["head_out"], labels, dims, f"z·W_O (head {head})",
                                                row_title="token", col_title="dimension"),
                         key="mech_head_out", name="mechanics-head-out",
                         caption="What this head adds to each token's residual stream.")
            with a2:
                ui.chart(figures.matrix_heatmap(w["attn_out"], labels, dims, "attention output",
                                                row_title="token", col_title="dimension"),
                         key="mech_attn_out", name="mechanics-attn-out",
                         caption="The sum over heads plus the bias: the attention layer's output.")

        fig_col = step(9, "MLP", r"x \leftarrow x + W_2\,\mathrm{GELU}(W_1\,\mathrm{LN}(x) + b_1) + b_2",
                       f"Each token on its own: widen to {4 * D}, apply GELU (most negative values become ≈0), "
                       f"project back to {D} and add to the residual stream.")
        with fig_col:
            m1, m2, m3 = st.tabs(["before GELU", "after GELU", "MLP output"])
            with m1:
                ui.chart(figures.matrix_heatmap(w["mlp_pre"], labels, [str(i) for i in range(4 * D)],
                                                "W₁·LN(x) + b₁", row_title="token", col_title="neuron"),
                         key="mech_mlp_pre", name="mechanics-mlp-pre",
                         caption="The hidden layer before the non-linearity.")
            with m2:
                ui.chart(figures.matrix_heatmap(w["mlp_post"], labels, [str(i) for i in range(4 * D)],
                                                "GELU(…)", row_title="token", col_title="neuron"),
                         key="mech_mlp_post", name="mechanics-mlp-post",
                         caption="After GELU: the neurons that fire for each token.")
            with m3:
                ui.chart(figures.matrix_heatmap(w["mlp_out"], labels, dims, "MLP output", row_title="token",
                                                col_title="dimension"),
                         key="mech_mlp_out", name="mechanics-mlp-out",
                         caption="What the MLP adds to each token's residual stream.")

        probs = w["probs"]  # (T, V)
        logits = w["logits"]
        if st.session_state.get(state.MECH_QUERY) not in range(T):
            st.session_state[state.MECH_QUERY] = T - 1
        fig_col = step(10, "Logits", r"\ell = \mathrm{LN}(x_{\text{final}})\, W_E^\top",
                       f"After all {cfg.n_layer} blocks, the final LayerNorm and the (tied) unembedding give one "
                       f"score per vocabulary token, for every position.")
        with fig_col:
            qpos = st.select_slider("Position", options=list(range(T)), key=state.MECH_QUERY,
                                    format_func=lambda i: labels[i])
            top = np.argsort(-probs[qpos])[:15]
            top_labels = figures.candidate_labels(lm.tokenizer.pieces([int(i) for i in top]))
            ui.chart(figures.vector_bar(logits[qpos][top], top_labels, f"logits at {labels[qpos]}",
                                        x_title="logit"),
                     key="mech_logits", name="mechanics-logits",
                     caption="The 15 highest logits at the chosen position (raw scores, any sign).")

        nxt = enc.ids[qpos + 1] if qpos + 1 < T else None
        hl = [int(i) for i in top].index(nxt) if nxt is not None and nxt in [int(i) for i in top] else None
        fig_col = step(11, "P(next token)", r"P(t_{i+1} = v) = \mathrm{softmax}(\ell_i)_v",
                       "Softmax turns the logits into probabilities (temperature 1)."
                       + (" Orange: the token that actually comes next in your input." if hl is not None else ""))
        with fig_col:
            ui.chart(figures.vector_bar(probs[qpos][top], top_labels, f"P(next | …{labels[qpos]})", highlight=hl),
                     key="mech_probs", name="mechanics-probs",
                     caption="The 15 most likely next tokens and their probabilities.")
            ui.csv_download(pd.DataFrame({"token_id": top, "piece": lm.tokenizer.pieces([int(i) for i in top]),
                                          "logit": logits[qpos][top], "probability": probs[qpos][top]}),
                            f"next-token-{qpos}", key="mech_probs_csv", label="Probabilities CSV")

with tab_train:
    reg = resources.registry()
    job = reg.active_job() or reg.latest()
    history, source = None, ""
    if job is not None:
        history, source = job.poll().history, f"run '{job.run_id}' ({job.status})"
    elif lm.history is not None and len(lm.history):
        history, source = lm.history, f"the active model's run ({lm.label})"
    if history is None or not len(history):
        st.info("No training history yet: train a model on the Train page (or pick a run in the sidebar) to see "
                "the training loop with real numbers.", icon=":material/lightbulb:")
    else:
        last = history.iloc[-1]
        st.caption(f"From {source}, step {int(last['step'])}.")
        groups = [c[len("grad_norm/"):] for c in history.columns if c.startswith("grad_norm/")]
        measured = history.dropna(subset=[f"grad_norm/{g}" for g in groups], how="all") if groups else history
        row = measured.iloc[-1] if len(measured) else last
        box = st.container(border=True)
        a, b = box.columns([1, 2.4])
        a.markdown("**1. Loss**")
        a.latex(r"\mathcal{L} = -\frac{1}{N}\sum_i \log P(t_{i+1} \mid t_{\le i})")
        a.caption(f"Cross-entropy of the true next tokens: {last['train_loss']:.3f} nats per token now "
                  f"(uniform guessing would be ln {cfg.vocab_size} = {np.log(cfg.vocab_size):.2f}).")
        with b:
            ui.chart(figures.loss_curves(history), key="mech_loss", name="mechanics-loss",
                     caption="Train loss (line) and validation loss (diamonds) against the step.")
        box = st.container(border=True)
        a, b = box.columns([1, 2.4])
        a.markdown("**2. Backpropagation**")
        a.latex(r"g = \frac{\partial \mathcal{L}}{\partial w}")
        a.caption("The gradient says how each weight should move to lower the loss; its size per layer shows "
                  "where learning happens.")
        with b:
            if groups:
                ui.chart(figures.group_bar(groups, [row[f"grad_norm/{g}"] for g in groups],
                                           f"Gradient norm per layer (step {int(row['step'])})", "‖g‖", log_y=True),
                         key="mech_grad", name="mechanics-grad-norm",
                         caption="Norm of the gradient of each parameter group at the last measured step "
                                 "(log scale).")
            else:
                st.caption("This run logged no per-layer gradient norms.")
        box = st.container(border=True)
        a, b = box.columns([1, 2.4])
        a.markdown("**3. Weight update**")
        a.latex(r"w \leftarrow w - \eta\,\frac{\hat m}{\sqrt{\hat v} + \epsilon} - \eta\lambda w")
        a.caption("AdamW moves each weight by a step scaled per parameter; the update/weight ratio ‖Δw‖/‖w‖ "
                  "around 10⁻³ is the usual healthy range (dashed line).")
        with b:
            ratios = [g for g in groups if f"update_ratio/{g}" in history.columns]
            if ratios:
                ui.chart(figures.group_bar(ratios, [row[f"update_ratio/{g}"] for g in ratios],
                                           f"Update / weight ratio (step {int(row['step'])})", "‖Δw‖ / ‖w‖",
                                           log_y=True, reference=1e-3),
                         key="mech_update", name="mechanics-update-ratio",
                         caption="How much each parameter group changed in one step, relative to its size.")
            else:
                st.caption("This run logged no update ratios.")
