"""Attention: type a text, see every head's attention pattern on it."""

from __future__ import annotations

import streamlit as st

from lm_core import metrics
from lm_core.mechanics import kv_groups

from app import figures, resources, state
from app.active import active_model
from app.core.inspection import scores_table
from app.core.text import MAX_INSPECT_TOKENS, inspect_limit
from app.widgets import ui

ui.page_header("Attention", "Where each head looks. Rows are queries (the token doing the looking), "
               "columns are keys (the earlier tokens it can see); each row sums to 1.")

lm = active_model()
cfg = lm.config
ui.time_travel_note(lm)

enc = ui.inspected_text(lm, height=110,
                        help=f"Up to {inspect_limit(cfg)['block_size']} tokens (the model's context, at most "
                             f"{MAX_INSPECT_TOKENS} here). Press Ctrl+Enter or click outside the box to update.")

ins = resources.inspection(lm.key, tuple(enc.ids), _model=lm.model)
next_pieces = lm.tokenizer.pieces([int(i) for i in ins["next_id"]])
ui.token_strip(enc.pieces, enc.ids,
               extra=[f"model's next guess: {figures.visible(p)} ({q:.0%})" for p, q in zip(next_pieces, ins["next_p"])])
st.caption(f"{len(enc.ids)} tokens. Hover a token for its id and the model's guess of the token after it.")
# a new text: its tokens, then the large head, reach the screen before the rest is drawn
new_text = st.session_state.get(state.ATTN_DRAWN) != (lm.key, enc.ids)
st.session_state[state.ATTN_DRAWN] = (lm.key, enc.ids)
if new_text:
    ui.show_now()
st.session_state[state.ATTN_SHOW_LARGE] = new_text


def _select_head_from_overview() -> None:
    """Callback of the overview chart: a clicked cell opens that head."""
    event = st.session_state.get(state.ATTN_OVERVIEW) or {}
    points = (event.get("selection") or {}).get("points") or []
    for p in points:
        if "x" in p and "y" in p:  # the overlay's points sit at x = head, y = layer
            st.session_state[state.ATTN_LAYER] = int(round(p["y"]))
            st.session_state[state.ATTN_HEAD] = int(round(p["x"]))
            return


@st.fragment
def head_explorer() -> None:
    """Layer/head choice, the large head, the overview, the layer grid and one query everywhere.

    A fragment: picking a head or clicking the overview reruns only this part."""
    L, H = cfg.n_layer, cfg.n_head
    if st.session_state.get(state.ATTN_LAYER, 0) >= L:
        st.session_state[state.ATTN_LAYER] = 0
    if st.session_state.get(state.ATTN_HEAD, 0) >= H:
        st.session_state[state.ATTN_HEAD] = 0
    if st.session_state.get(state.ATTN_METRIC) not in metrics.HEAD_METRICS:
        st.session_state[state.ATTN_METRIC] = "induction"

    c1, c2, c3 = st.columns([1, 1, 3])
    layer = c1.selectbox("Layer", list(range(L)), key=state.ATTN_LAYER)
    groups = kv_groups(cfg)  # grouped-query attention: the query heads of each key/value head
    kv_of = {h: g for g, hs in enumerate(groups) for h in hs}
    shared = len(groups) < H
    head = c2.selectbox("Head", list(range(H)), key=state.ATTN_HEAD,
                        format_func=(lambda h: f"H{h} (KV {kv_of[h]})") if shared else str)
    metric = c3.radio("Head score", list(metrics.HEAD_METRICS), key=state.ATTN_METRIC, horizontal=True,
                      format_func=lambda m: metrics.head_metric(m).label, help=ui.metric_help())
    spec = metrics.head_metric(metric)
    if shared:
        st.caption(f"Grouped-query attention: {H} query heads share {len(groups)} key/value head(s). Head {head} "
                   f"reads KV head {kv_of[head]} with query heads {', '.join(map(str, groups[kv_of[head]]))}: "
                   f"same keys and values, its own queries, so its own pattern. The overview outlines each group.")
    patterns = ins["patterns"]  # (L, H, T, T)

    left, right = st.columns([3, 2])
    with left:
        ui.chart(figures.attention_heatmap(patterns[layer, head], enc.labels, title=f"Layer {layer}, head {head}"),
                 key="attn_one", name=f"attention-L{layer}-H{head}",
                 caption="Rows: the query token (reading down the text); columns: the key token it attends to. "
                         "Darker = more attention; each row sums to 1, and nothing right of the diagonal "
                         "(the future) is visible. Hover a cell for both tokens and the weight.")
    if st.session_state.pop(state.ATTN_SHOW_LARGE, False):  # not when the fragment reruns alone
        ui.show_now()
    with right:
        scores = ins[f"score/{metric}"]
        ui.chart(figures.head_score_overview(scores, spec.label, selected=(layer, head), zrange=spec.value_range,
                                             groups=groups if shared else None),
                 key=state.ATTN_OVERVIEW, name=f"head-scores-{metric}",
                 on_select=_select_head_from_overview, selection_mode="points",
                 caption=f"Every head at once: rows are layers, columns heads, colour and number the "
                         f"{spec.label} score on this text. Click a cell to open that head (outlined).")
        ui.csv_download(scores_table(ins), "head-scores", key="attn_scores_csv", label="Head scores CSV")

    # Only the open tab is computed and drawn (a real-size model's query chart has 270 rows)
    tab_grid, tab_query = st.tabs(["All heads of the layer", "One query token, every head"], key=state.ATTN_TAB,
                                  on_change="rerun")
    if tab_grid.open:
        with tab_grid:
            _layer_grid(patterns, layer, head, kv_of if shared else None)
    if tab_query.open:
        with tab_query:
            _query_everywhere(patterns)


def _layer_grid(patterns, layer: int, head: int, kv_of: dict | None) -> None:
    """Every head of one layer, small (a page of the model's heads: one layer at a time)."""
    ui.chart(figures.attention_grid(patterns[layer], enc.labels, layer, selected_head=head,
                                    kv_heads=[kv_of[h] for h in range(cfg.n_head)] if kv_of else None),
             key="attn_grid", name=f"attention-layer-{layer}",
             caption="Each panel is one head of this layer, with the same axes as the large chart "
                     "(query down, key across) and the same colour scale; hover for the tokens.")


def _query_everywhere(patterns) -> None:
    """Where one query token looks, in every head of every layer."""
    T = len(enc.ids)
    if st.session_state.get(state.ATTN_QUERY) not in range(T):
        st.session_state[state.ATTN_QUERY] = T - 1
    q = st.select_slider("Query token", options=list(range(T)), key=state.ATTN_QUERY,
                         format_func=lambda i: enc.labels[i])
    rows = patterns[:, :, q, : q + 1]  # (L, H, q+1)
    ui.chart(figures.query_attention(rows, enc.labels[: q + 1], enc.labels[q], cfg.n_layer, cfg.n_head),
             key="attn_query_all", name=f"attention-query-{q}",
             caption="One row per head (layer by layer): where the chosen query token looks. Columns are "
                     "the tokens up to and including it; darker = more attention.")


head_explorer()
