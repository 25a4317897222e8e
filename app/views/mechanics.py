"""Mechanics: the transformer's arithmetic, step by step, with this model's real numbers, in the
model's own layout (LayerNorm or RMSNorm, learned or rotary positions, GELU or SwiGLU, multi-head
or grouped-query attention, sequential or parallel residual)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import family_figures, figures, resources, state
from app.active import active_model
from app.core import lessons
from app.core.models import corpus_spec
from app.core.text import InputProblem, encode_text
from app.widgets import ui

MAX_TOKENS = 16  # a short input keeps every matrix readable

ui.page_header("Mechanics", "From token ids to the probability of the next token, and how training changes "
               "the weights — every number below is computed by the active model.")

lm = active_model()
cfg = lm.config
ui.time_travel_note(lm)
D, H, Dh = cfg.n_embd, cfg.n_head, cfg.head_dim
Hkv = cfg.kv_heads
G = H // Hkv

c1, c2, c3 = st.columns([4, 1, 1])
text = c1.text_input("Short input", key=state.MECH_TEXT, help=f"At most {MAX_TOKENS} tokens are used.")
if st.session_state.get(state.MECH_LAYER, 0) >= cfg.n_layer:
    st.session_state[state.MECH_LAYER] = 0
if st.session_state.get(state.MECH_HEAD, 0) >= H:
    st.session_state[state.MECH_HEAD] = 0
layer = c2.selectbox("Layer", list(range(cfg.n_layer)), key=state.MECH_LAYER)
head = c3.selectbox("Head", list(range(H)), key=state.MECH_HEAD,
                    format_func=(lambda h: f"{h} (KV {h // G})") if G > 1 else str,
                    help=(f"{H} query heads share {Hkv} key/value head(s): heads {G} at a time read the same "
                          f"keys and values." if G > 1 else None))

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
        lay = w["layout"]
        g = int(w["kv_head"])
        rms = lay.norm == "rmsnorm"
        rotary = lay.pos == "rotary"
        N = r"\mathrm{RMSNorm}" if rms else r"\mathrm{LN}"
        st.caption(f"Layout: {lay.summary()}.")
        labels = enc.labels
        T = len(labels)
        dims = [str(i) for i in range(D)]
        hdims = [str(i) for i in range(Dh)]
        numbers = iter(range(1, 100))

        def step(title: str, formula: str, explain: str):
            box = st.container(border=True)
            a, b = box.columns([1, 2.4])
            a.markdown(f"**{next(numbers)}. {title}**")
            a.latex(formula)
            a.caption(explain)
            return b

        def heat(mat, cols, title, key, caption, **kw):
            ui.chart(figures.matrix_heatmap(mat, labels, cols, title, row_title=kw.pop("row_title", "token"),
                                            col_title=kw.pop("col_title", "dimension"), **kw),
                     key=key, name=key.replace("_", "-").replace("mech-", "mechanics-"), caption=caption)

        # -- tokens and embeddings ------------------------------------------------------------
        fig_col = step("Token ids", r"\text{text} \rightarrow (t_0, \dots, t_{T-1})",
                       f"The tokenizer ({lm.tokenizer.kind}) cuts the text into {T} tokens; each is an id into "
                       f"the vocabulary of {cfg.vocab_size}.")
        with fig_col:
            ui.token_strip(enc.pieces, enc.ids)
            st.dataframe(pd.DataFrame([[figures.visible(p) for p in enc.pieces], [str(i) for i in enc.ids]],
                                      index=["token", "id"], columns=[str(i) for i in range(T)]),
                         width="stretch")

        above = "" if layer == 0 else f" Below: the input of block {layer}, after the blocks before it."
        if lay.pos == "learned":
            fig_col = step("Embedding + position", r"x_i = W_E[t_i] + W_P[i]",
                           "Each id picks a row of the token embedding; each position a row of the learned "
                           f"position embedding; their sum (width {D}) starts the residual stream." + above)
        elif rotary:
            fig_col = step("Embedding", r"x_i = W_E[t_i]",
                           f"Each id picks a row of the token embedding (width {D}); no position vector is added. "
                           "This model tells positions apart inside attention, by rotating q and k "
                           "(rotary, the step after Q, K, V)." + above)
        else:
            fig_col = step("Embedding", r"x_i = W_E[t_i]",
                           f"Each id picks a row of the token embedding (width {D}). This model has no position "
                           "signal at all: only the causal mask (a token sees the ones before it) tells it where "
                           "it is." + above)
        with fig_col:
            if layer == 0 and lay.pos == "learned":
                t1, t2, t3 = st.tabs(["token embedding", "position embedding", "sum x"])
                for tab, key, title in ((t1, "tok_embed", "W_E[t]"), (t2, "pos_embed", "W_P[i]"), (t3, "resid_pre", "x")):
                    with tab:
                        heat(w[key], dims, title, f"mech_{key}",
                             "Rows: tokens; columns: embedding dimensions; red positive, blue negative.")
            elif layer == 0:
                heat(w["resid_pre"], dims, "x = W_E[t]", "mech_tok_embed",
                     "Rows: tokens; columns: embedding dimensions; red positive, blue negative.")
            else:
                heat(w["resid_pre"], dims, f"x: input of block {layer}", "mech_resid_pre",
                     "Rows: tokens; columns: dimensions of the residual stream; red positive, blue negative.")

        # -- the first norm ----------------------------------------------------------------------
        if rms:
            formula = r"\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{D}\sum_j x_j^2 + \epsilon}} \odot g"
            explain = ("Each token's vector is divided by its root mean square and multiplied by a learned gain g. "
                       "Nothing is subtracted first (no centring) and there is no bias.")
        else:
            formula = r"\mathrm{LN}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot g + b"
            explain = ("Each token's vector has its mean μ subtracted, is divided by its standard deviation, "
                       "then scaled by a learned gain g and shifted by a bias b.")
        fig_col = step(lay.norm_name, formula, explain + " Attention reads this normalised x.")
        with fig_col:
            n1, n2 = st.tabs(["divisor per token", "normalised x"])
            with n1:
                ui.chart(family_figures.norm_scale_bar(w["ln1_scale"], labels, lay.norm_name),
                         key="mech_ln1_scale", name="mechanics-norm-scale",
                         caption="What each token's vector is divided by (the same number for all its dimensions).")
            with n2:
                heat(w["ln_1"], dims, f"{lay.norm_name}(x)", "mech_ln_1",
                     "The normalised vectors attention reads; red positive, blue negative.")

        # -- q, k, v ---------------------------------------------------------------------------
        share = ""
        if G > 1:
            others = ", ".join(str(h) for h in w["group"])
            share = (f" {'Multi-query' if Hkv == 1 else 'Grouped-query'} attention: the {H} query heads share "
                     f"{Hkv} key/value head{'s' if Hkv > 1 else ''}; query head "
                     f"{head} reads key/value head {g}, shared by query heads {others}.")
        qk_note = (" Then q and k are each RMS-normalised over the head's dimensions (q/k norm), which keeps "
                   "the scores from growing." if lay.qk_norm else "")
        bqkv = (lambda n: f" + b_{n}") if cfg.use_qkv_bias else (lambda n: "")
        fig_col = step("Q, K, V",
                       r"\begin{aligned} Q &= " + N + r"(x)\,W_Q" + bqkv("Q") + r" \\ K &= " + N + r"(x)\,W_K"
                       + bqkv("K") + r" \\ V &= " + N + r"(x)\,W_V" + bqkv("V")
                       + (r" \\ q &\leftarrow \mathrm{RMSNorm}(q),\ k \leftarrow \mathrm{RMSNorm}(k)" if lay.qk_norm else "")
                       + r" \end{aligned}",
                       f"Query head {head} projects each normalised token to a query, and key/value head {g} to a key "
                       f"and a value, each of width d_k = {Dh}." + share + qk_note
                       + ("" if float(np.abs(w["b_Q"]).sum()) else " This model has no q/k/v biases."))
        with fig_col:
            qc = st.columns(3)
            for col, key, what in zip(qc, ("q", "k", "v"), (f"query head {head}", f"KV head {g}", f"KV head {g}")):
                with col:
                    heat(w[key], hdims, f"{key.upper()} ({what})", f"mech_{key}",
                         f"{key.upper()}: one row per token, {Dh} columns" + (" (after q/k norm)." if lay.qk_norm
                                                                            and key != "v" else "."),
                         height=max(220, 20 * T + 100))
            if lay.qk_norm:
                with st.expander("q and k before the q/k norm"):
                    qa, qb = st.columns(2)
                    with qa:
                        heat(w["q_proj"], hdims, "q before norm", "mech_q_proj", "The raw projection N(x)·W_Q + b_Q.")
                    with qb:
                        heat(w["k_proj"], hdims, "k before norm", "mech_k_proj", "The raw projection N(x)·W_K + b_K.")

        # -- rotary ----------------------------------------------------------------------------
        if rotary:
            R = int(w["rotary_dim"])
            part = (f"all {Dh} dims of each head" if R == Dh else
                    f"the first {R} of each head's {Dh} dims (the other {Dh - R} pass unchanged)")
            fig_col = step("Rotary positions (RoPE)",
                           r"\begin{pmatrix} q'_{m,i} \\ q'_{m,i+R/2} \end{pmatrix} = "
                           r"\begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i "
                           r"\end{pmatrix} \begin{pmatrix} q_{m,i} \\ q_{m,i+R/2} \end{pmatrix},\ "
                           r"\theta_i = \text{base}^{-2i/R}",
                           f"Each pair of dims (i, i + {R // 2}) of q and of k is turned by the angle m·θᵢ of its "
                           f"position m; this rotates {part}. Then q'·k' depends on the two positions only through "
                           f"their distance: that is how this model knows where tokens are (base "
                           f"{cfg.rope_base:g}).")
            with fig_col:
                r1, r2, r3 = st.tabs(["angles of these positions", "q before → after", "k before → after"])
                with r1:
                    ui.chart(family_figures.rotary_angles(w["angles"], labels, R), key="mech_rot_angles",
                             name="mechanics-rotary-angles",
                             caption="Row m, column i: the angle m·θᵢ (radians, mod 2π) by which position m turns "
                                     "pair i. Left pairs turn fast (fine, local position), right pairs slowly "
                                     "(coarse, far).")
                for tab, key, what in ((r2, "q", f"query head {head}"), (r3, "k", f"KV head {g}")):
                    with tab:
                        ra, rb = st.columns(2)
                        with ra:
                            heat(w[key], hdims, f"{key} before rotation", f"mech_{key}_prerot",
                                 f"{key} of {what} as projected (position-free).")
                        with rb:
                            heat(w[f"{key}_rot"], hdims, f"{key}' after rotation", f"mech_{key}_rot",
                                 f"The same vectors turned by their positions: what the scores use.")

        # -- attention -------------------------------------------------------------------------
        qk = r"Q' K'^\top" if rotary else r"Q K^\top"
        fig_col = step("Scores", r"S = \frac{" + qk + r"}{\sqrt{d_k}}",
                       f"Each query row is compared with every key by a dot product"
                       + (" (of the rotated q and k)" if rotary else "")
                       + f", scaled by 1/√{Dh} = {w['scale']:.3f} so the softmax does not saturate.")
        with fig_col:
            heat(w["scaled"], labels, "QKᵀ/√d_k", "mech_scaled",
                 "Rows: queries; columns: keys; red = the query matches the key well.",
                 row_title="query", col_title="key", show_values=T <= 12)

        win = lay.sliding_window
        fig_col = step("Causal mask", r"S_{ij} = -\infty \text{ for } j > i"
                       + (r" \text{ or } j \le i - " + str(win) if win is not None else ""),
                       "A token may not look at the future: scores right of the diagonal become −∞ (blank)."
                       + (f" Sliding window: a query also cannot see keys {win} or more positions back."
                          if win is not None else ""))
        with fig_col:
            heat(w["masked"], labels, "masked scores", "mech_masked", "Same as above with the hidden keys blanked out.",
                 row_title="query", col_title="key", show_values=T <= 12)

        fig_col = step("Softmax", r"A_{ij} = \frac{e^{S_{ij}}}{\sum_{k \le i} e^{S_{ik}}}",
                       "Each row becomes a probability distribution over the visible keys: the attention pattern.")
        with fig_col:
            heat(w["pattern"], labels, "attention pattern A", "mech_pattern",
                 "Rows sum to 1; darker = more attention (the same picture as on the Attention page).",
                 kind="weight", zrange=(0.0, 1.0), row_title="query", col_title="key", show_values=T <= 12)

        fig_col = step("Weighted sum of V", r"z_i = \sum_j A_{ij}\, V_j",
                       "Each query gathers the values of the tokens it attends to, weighted by the pattern"
                       + (f" (the values of key/value head {g})." if G > 1 else "."))
        with fig_col:
            heat(w["z"], hdims, "z = A·V", "mech_z", f"One row per token: head {head}'s output, {Dh} numbers.")

        par = lay.parallel_residual
        fig_col = step("Output projection", r"\mathrm{attn}(x) = \sum_h z^{(h)} W_O^{(h)}"
                       + (" + b_O" if cfg.use_attn_out_bias else ""),
                       f"Each head's z is mapped back to width {D}; the {H} heads' outputs are added "
                       + ("(plus a bias) " if float(np.abs(w["c_proj_bias"]).sum()) else "")
                       + ("and kept for the end of the block (parallel residual, next step)." if par
                          else "to the residual stream: x ← x + attn(x)."))
        with fig_col:
            a1, a2 = st.tabs([f"head {head}'s contribution", "all heads summed"])
            with a1:
                heat(w["head_out"], dims, f"z·W_O (head {head})", "mech_head_out",
                     "What this head adds to each token's residual stream.")
            with a2:
                heat(w["attn_out"], dims, "attention output", "mech_attn_out",
                     "The sum over heads (plus the bias, if any): the attention layer's output.")

        # -- MLP -------------------------------------------------------------------------------
        F_ = w["mlp_post"].shape[1]
        neurons = [str(i) for i in range(F_)]
        if lay.mlp == "swiglu":
            formula = (r"\mathrm{MLP}(u) = W_{down}\big(\mathrm{SiLU}(W_{gate}\,u) \odot W_{up}\,u\big),\ u = "
                       + N + r"_2(x)")
            explain = (f"Each token on its own: two projections to width {F_}, a gate and an 'up' branch; "
                       "SiLU(gate) = gate·σ(gate) decides how much of each 'up' neuron passes (⊙: multiply "
                       f"element by element); then 'down' back to {D}.")
        else:
            formula = (r"\mathrm{MLP}(u) = W_2\,\mathrm{GELU}(W_1 u + b_1) + b_2,\ u = " if cfg.use_mlp_bias else
                       r"\mathrm{MLP}(u) = W_2\,\mathrm{GELU}(W_1 u),\ u = ") + N + r"_2(x)"
            explain = (f"Each token on its own: widen to {F_}, apply GELU (most negative values become ≈0), "
                       f"project back to {D}.")
        if par:
            formula += r"\\ x \leftarrow x + \mathrm{attn}(" + N + r"_1(x)) + \mathrm{MLP}(" + N + r"_2(x))"
            explain += (" Parallel residual (GPT-NeoX): the MLP reads the block's input x, not x + attn(x); "
                        "attention and MLP outputs are both added to x at the end.")
        else:
            formula += r"\\ x \leftarrow x + \mathrm{MLP}(" + N + r"_2(x))"
            explain += " It reads x after attention was added, and adds its output to the residual stream."
        fig_col = step(lay.mlp_name, r"\begin{gathered}" + formula + r"\end{gathered}", explain)
        with fig_col:
            if lay.mlp == "swiglu":
                m1, m1b, m2, m3 = st.tabs(["gate (before SiLU)", "up branch", "SiLU(gate) ⊙ up", "MLP output"])
                with m1b:
                    heat(w["mlp_pre_linear"], neurons, "W_up·u", "mech_mlp_up", "The linear 'up' branch.",
                         col_title="neuron")
                pre_title, post_title = "W_gate·u", "SiLU(gate) ⊙ up"
                pre_cap = "The gate before SiLU: negative values will mostly close their neuron."
                post_cap = "What passes the gate: the hidden layer the down projection reads."
            else:
                m1, m2, m3 = st.tabs(["before GELU", "after GELU", "MLP output"])
                pre_title, post_title = "W₁·u + b₁", "GELU(…)"
                pre_cap, post_cap = ("The hidden layer before the non-linearity.",
                                     "After GELU: the neurons that fire for each token.")
            with m1:
                heat(w["mlp_pre"], neurons, pre_title, "mech_mlp_pre", pre_cap, col_title="neuron")
            with m2:
                heat(w["mlp_post"], neurons, post_title, "mech_mlp_post", post_cap, col_title="neuron")
            with m3:
                heat(w["mlp_out"], dims, "MLP output", "mech_mlp_out",
                     "What the MLP adds to each token's residual stream.")

        # -- output ----------------------------------------------------------------------------
        probs = w["probs"]  # (T, V)
        logits = w["logits"]
        if st.session_state.get(state.MECH_QUERY) not in range(T):
            st.session_state[state.MECH_QUERY] = T - 1
        unembed = r"W_E^\top" if lay.tied else r"W_U"
        fig_col = step("Logits", r"\ell = " + N + r"_{\text{final}}(x_{\text{final}})\, " + unembed,
                       f"After all {cfg.n_layer} blocks, the final {lay.norm_name} and the "
                       + ("unembedding (the token embedding matrix again, tied)" if lay.tied
                          else "unembedding (a matrix of its own, untied)")
                       + " give one score per vocabulary token, for every position.")
        with fig_col:
            qpos = st.select_slider("Position", options=list(range(T)), key=state.MECH_QUERY,
                                    format_func=lambda i: labels[i])
            top = np.argsort(-probs[qpos])[:15]
            top_labels = figures.candidate_labels(lm.tokenizer.pieces([int(i) for i in top]))
            ui.chart(figures.vector_bar(logits[qpos][top], top_labels, f"logits at {labels[qpos]}",
                                        x_title="logit"),
                     key="mech_logits", name="mechanics-logits",
                     caption="The 15 highest logits at the chosen position (raw scores, any sign).")

        # the bigram baseline: what counting pairs of tokens in the training text predicts here
        spec = corpus_spec(lm)
        bigram, bigram_note = None, ""
        try:
            ngrams = resources.corpus_ngrams(lm.family, spec, lm.tokenizer)
            bigram = ngrams.next_token_probs(enc.ids[: qpos + 1], 2)
        except lessons.NoCorpus as e:
            bigram_note = f"No bigram baseline beside it: {e}."

        nxt = enc.ids[qpos + 1] if qpos + 1 < T else None
        hl = [int(i) for i in top].index(nxt) if nxt is not None and nxt in [int(i) for i in top] else None
        fig_col = step("P(next token)", r"P(t_{i+1} = v) = \mathrm{softmax}(\ell_i)_v",
                       "Softmax turns the logits into probabilities (temperature 1)."
                       + (" Orange: the token that actually comes next in your input." if hl is not None else "")
                       + (" Grey: the bigram baseline, which predicts from the previous token alone."
                          if bigram is not None else ""))
        with fig_col:
            if bigram is not None:
                ui.chart(figures.before_after_bar(top_labels, bigram[top], probs[qpos][top],
                                                  f"P(next | …{labels[qpos]})", names=("bigram", "transformer"),
                                                  highlight=hl),
                         key="mech_probs", name="mechanics-probs",
                         caption=f"The transformer's 15 most likely next tokens (blue) beside the bigram Markov "
                                 f"chain's probability of the same tokens (grey), counted on the train split of "
                                 f"`{spec}` and smoothed (Kneser-Ney). Where they differ, the transformer uses more "
                                 f"than the previous token.")
            else:
                ui.chart(figures.vector_bar(probs[qpos][top], top_labels, f"P(next | …{labels[qpos]})", highlight=hl),
                         key="mech_probs", name="mechanics-probs",
                         caption="The 15 most likely next tokens and their probabilities.")
                st.caption(bigram_note)
            table = {"token_id": top, "piece": lm.tokenizer.pieces([int(i) for i in top]),
                     "logit": logits[qpos][top], "probability": probs[qpos][top]}
            if bigram is not None:
                table["bigram_probability"] = bigram[top]
            ui.csv_download(pd.DataFrame(table), f"next-token-{qpos}", key="mech_probs_csv", label="Probabilities CSV")

with tab_train:
    reg = resources.registry()
    job = reg.active_job() or reg.latest(owner=ui.browser_id())  # shared server: this browser's last run
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
