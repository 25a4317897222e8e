"""Ablation: switch heads or MLPs off and see what the model loses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import figures, resources, state
from app.active import active_model
from app.core import sweeps
from app.core.models import corpus_spec
from app.core.predictions import head_label, parse_head
from app.core.text import InputProblem
from app.widgets import ui

ui.page_header("Ablation", "Switch attention heads, or a whole layer's MLP, off and watch the next-token "
               "distribution, the loss on your text and the validation loss change. Built on the model's "
               "hooks (run_with_hooks): a head is cut at its output z, before the output projection.")

lm = active_model()
cfg = lm.config
L, H = cfg.n_layer, cfg.n_head
ui.time_travel_note(lm)

enc = ui.inspected_text(lm, height=90, min_tokens=2,
                        help="The same text as on the Attention page. The loss is the mean cross-entropy of each "
                             "token given the ones before it.")
T = len(enc.ids)

# -- what is switched off -----------------------------------------------------------------------
all_heads = [head_label(l, h) for l in range(L) for h in range(H)]
ss = st.session_state
kept = [x for x in ss.get(state.ABL_HEADS) or [] if x in all_heads]
if kept != list(ss.get(state.ABL_HEADS) or []):
    ss[state.ABL_HEADS] = kept  # another model: heads it does not have are dropped
kept_mlps = [m for m in ss.get(state.ABL_MLPS) or [] if m in range(L)]
if kept_mlps != list(ss.get(state.ABL_MLPS) or []):
    ss[state.ABL_MLPS] = kept_mlps
ss.setdefault(state.ABL_GRID_NONCE, 0)


def _toggle_from_grid() -> None:
    """Callback of the heads grid: a clicked cell switches that head off (or back on)."""
    event = ss.get(f"abl_grid_{ss[state.ABL_GRID_NONCE]}") or {}
    heads = list(ss.get(state.ABL_HEADS) or [])
    clicked = {head_label(int(round(p["y"])), int(round(p["x"])))  # the overlay's points: x = head, y = layer
               for p in (event.get("selection") or {}).get("points") or [] if "x" in p and "y" in p}
    for label in sorted(clicked & set(all_heads)):
        if label in heads:
            heads.remove(label)
        else:
            heads.append(label)
    ss[state.ABL_HEADS] = heads
    ss[state.ABL_GRID_NONCE] += 1  # a new chart key: its selection is cleared, so the same cell can be clicked again


def _reset() -> None:
    ss[state.ABL_HEADS] = []
    ss[state.ABL_MLPS] = []


c1, c2, c3 = st.columns([1.2, 3, 1])
mode = c1.radio("Ablation", ["zero", "mean"], key=state.ABL_MODE, horizontal=True,
                format_func=lambda m: {"zero": "zero", "mean": "mean"}[m],
                help="zero: the head's output (or the MLP's) is set to 0. mean: it is replaced at every position by "
                     "its mean over the positions of this text, which removes what is specific to each token but "
                     "keeps the average signal.")
c2.pills("MLPs switched off", list(range(L)), selection_mode="multi", key=state.ABL_MLPS,
         format_func=lambda l: f"MLP {l}", help="Switch off a whole layer's MLP.")
c3.button("Switch all back on", key="abl_btn_reset", wrap=True, on_click=_reset, icon=":material/restart_alt:")
st.multiselect("Heads switched off", all_heads, key=state.ABL_HEADS,
               help="Or click the cells of the grid below.", placeholder="none: click heads in the grid")

heads = sorted(parse_head(x) for x in ss[state.ABL_HEADS])
mlps = sorted(int(m) for m in ss[state.ABL_MLPS] or [])
res = resources.ablation(lm.key, tuple(enc.ids), tuple(heads), tuple(mlps), mode, _model=lm.model)

# -- every head on its own ----------------------------------------------------------------------
# A small model sweeps every head unasked; a real-size one (270 heads × a 135M forward) on request,
# a chunk per fragment rerun with a progress bar and a Cancel button. Finished sweeps are kept for
# every session: the same model, text and mode again is instant.
store = resources.sweep_results()
sweep_key = sweeps.sweep_key(lm.key, enc.ids, mode)
effects = store.get(sweep_key)
if effects is None and sweeps.sweep_cost(lm.model, T) <= sweeps.AUTO_SWEEP_COST:
    effects = resources.ablation_effects(lm.key, tuple(enc.ids), mode, _model=lm.model)
running = ss.get(state.SWEEP)
if running is not None and (running.key != sweep_key or effects is not None):
    if effects is None:
        ss[state.SWEEP_NOTICE] = (f"The sweep over every head stopped after {running.done} of {running.total} "
                                  f"heads: the text, the mode or the model changed.")
    ss[state.SWEEP] = running = None


def _start_sweep(model_key: str, ids: list[int], mode_: str) -> None:
    ss[state.SWEEP] = sweeps.ablation_sweep(model_key, lm.model, ids, mode_)


def _cancel_sweep() -> None:
    sw = ss.get(state.SWEEP)
    if sw is not None:
        ss[state.SWEEP_NOTICE] = (f"Cancelled after {sw.done} of {sw.total} heads. Press the button again to "
                                  f"start over.")
    ss[state.SWEEP] = None


@st.fragment(run_every=sweeps.TICK_SECONDS if running is not None else None)
def sweep_progress() -> None:
    """One chunk of the running sweep per rerun, then its progress; the page redraws when it ends."""
    sw = ss.get(state.SWEEP)
    if sw is None:  # cancelled (the button's callback): the whole page shows why and the start button again
        st.rerun()
    def progress_text() -> str:
        eta = sw.eta_s()
        return (f"Ablating each head on its own: {sw.done} of {sw.total} heads"
                + (f", about {eta:.0f} s left" if eta is not None else ""))

    bar = st.progress(sw.fraction, text=progress_text())  # drawn before the chunk: it shows at once
    st.button("Cancel", key="abl_btn_cancel", on_click=_cancel_sweep, icon=":material/cancel:")
    try:
        sw.advance(lm.model)
    except (ValueError, RuntimeError) as e:  # e.g. out of memory half-way: say so, keep the page
        ss[state.SWEEP] = None
        ss[state.SWEEP_NOTICE] = ui.problem_text(e, "The sweep stopped; try a shorter text.")
        st.rerun()
    if sw.finished:
        store.put(sw.key, sw.values)
        ss[state.SWEEP] = None
        st.rerun()  # the whole page: the grid takes its colours
    bar.progress(sw.fraction, text=progress_text())


left, right = st.columns([2, 3])
with left:
    off = np.zeros((L, H), dtype=bool)
    for l, h in heads:
        off[l, h] = True
    ui.chart(figures.ablation_grid(off, effects), key=f"abl_grid_{ss[state.ABL_GRID_NONCE]}", name="ablation-heads",
             on_select=_toggle_from_grid, selection_mode="points",
             caption="Layers (rows) × heads (columns). Click a cell to switch that head off (✕, outlined) or back "
                     "on. Colour: how much the loss on this text rises when that head alone is ablated "
                     "(red = the model relies on it here; blue = it does better without it)."
                     + ("" if effects is not None else " (Not computed yet for this large model: see the button.)"))
    notice = ss.pop(state.SWEEP_NOTICE, None)
    if notice:
        st.info(notice, icon=":material/info:")
    if effects is None and running is None:
        st.button(f"Compute every head's effect ({L * H} forward passes)", key="abl_btn_effects",
                  icon=":material/calculate:", on_click=_start_sweep, args=(lm.key, list(enc.ids), mode),
                  help="Ablates each head on its own and measures the loss on this text: one forward per head. "
                       "Runs in steps with a progress bar; you can cancel it. The result is kept for this text.")
    elif effects is None:
        sweep_progress()
    else:
        eff_df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                               "loss_increase": effects.ravel()})
        ui.csv_download(eff_df, f"head-ablation-effects-{mode}", key="abl_effects_csv", label="Single-head effects CSV")

with right:
    rows = [("Loss on this text", float(res["loss_before"]), float(res["loss_after"]))]
    spec = corpus_spec(lm)
    val_note = ""
    if spec:
        try:
            windows = resources.val_windows(spec, f"{lm.family}|{cfg.vocab_size}", cfg.block_size,
                                            _tokenizer=lm.tokenizer)
            vb, va = resources.val_loss(lm.key, windows, tuple(heads), tuple(mlps), mode, _model=lm.model)
            rows.append((f"Val loss ({len(windows)} × {cfg.block_size} tokens)", vb, va))
            val_note = (f"The val loss is measured on a fixed slice of the validation part (the last 10%) of "
                        f"the training corpus `{spec}`: the first {len(windows)} windows of {cfg.block_size} tokens.")
        except (ValueError, InputProblem) as e:
            val_note = f"No val loss: the training corpus `{spec}` could not be read here ({e})."
    else:
        val_note = ("No val loss: this model's training corpus is not known (a pretrained model); the loss on "
                    "your text is shown instead.")
    summary = pd.DataFrame(rows, columns=["", "intact", "ablated"])
    summary["difference"] = summary["ablated"] - summary["intact"]
    m = st.columns(len(rows))
    anything_off = bool(heads or mlps)
    for col, (name, before, after) in zip(m, rows):
        col.metric(name, f"{after:.4f}", delta=f"{after - before:+.4f}" if anything_off else None,
                   delta_color="inverse", help=f"Intact: {before:.4f} nats per token; the delta is ablated − intact.")
    st.dataframe(summary, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in ("intact", "ablated", "difference")})
    what = (", ".join(head_label(l, h) for l, h in heads) or "no head") + \
           (" and " + ", ".join(f"MLP {l}" for l in mlps) if mlps else "")
    st.caption(f"Switched off ({mode} ablation): {what}. Loss = mean cross-entropy of the next token, nats; "
               f"the difference is ablated − intact (up = worse). {val_note}")

    if ss.get(state.ABL_POS) not in range(T - 1):
        ss[state.ABL_POS] = T - 2
    pos = st.select_slider("Predicting after", options=list(range(T - 1)), key=state.ABL_POS,
                           format_func=lambda i: enc.labels[i],
                           help="The position whose next-token distribution is shown.")
    cand = res["cand_ids"][pos]
    n = int((cand >= 0).sum())
    order = np.argsort(-np.maximum(res["p_before"][pos, :n], res["p_after"][pos, :n]))[:12]
    ids = [int(cand[i]) for i in order]
    true_next = enc.ids[pos + 1]
    hl = ids.index(true_next) if true_next in ids else None
    ui.chart(figures.before_after_bar(figures.candidate_labels(lm.tokenizer.pieces(ids)),
                                      res["p_before"][pos, order], res["p_after"][pos, order],
                                      f"Next token after {enc.labels[pos]}", highlight=hl),
             key="abl_dist", name=f"ablation-next-token-{pos}",
             caption="The most likely next tokens with every unit on (grey) and with the chosen ones switched off "
                     "(blue)" + ("; orange: the token that really comes next" if hl is not None else "") + ". "
                     f"The true next token's probability goes from {np.exp(-res['nll_before'][pos]):.3f} to "
                     f"{np.exp(-res['nll_after'][pos]):.3f}.")
    dist = pd.DataFrame({"token_id": ids, "piece": lm.tokenizer.pieces(ids),
                         "p_intact": res["p_before"][pos, order], "p_ablated": res["p_after"][pos, order]})
    ui.csv_download(dist, f"ablation-next-token-{pos}", key="abl_dist_csv", label="Probabilities CSV")
    ui.token_search(lm, state.ABL_FIND, what=f"after {enc.labels[pos]}, intact and ablated",
                    dists=lambda: resources.ablation_distributions(lm.key, tuple(enc.ids), tuple(heads), tuple(mlps),
                                                                   mode, int(pos), _model=lm.model))
