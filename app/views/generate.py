"""Generate: watch the model write, one token at a time, and branch from any candidate."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import streamlit as st

from app import compute, figures, state, ui
from app.active import active_model
from app.compute import InputProblem

ui.page_header("Generate", "Each new token is drawn from the model's distribution over the vocabulary. "
               "See the candidates it weighed, where every head looked, and branch from any candidate.")

lm = active_model()
cfg = lm.config
pieces_of = lm.tokenizer.pieces

trace = state.gen_trace()
if trace is not None and trace.model_key != lm.key:
    st.info("The model changed, so the previous generation was cleared.", icon=":material/info:")
    state.set_gen_trace(None)
    trace = None

prompt = st.text_area("Prompt", key=state.PROMPT, height=90,
                      help=f"The model sees the last {cfg.block_size} tokens of the prompt and of what it wrote.")
c = st.columns([1.4, 1, 1.4, 1, 1])
temperature = c[0].slider("Temperature", 0.0, 2.0, step=0.05, key=state.GEN_TEMPERATURE,
                          help="0 = always the most likely token; higher = more adventurous.")
top_k = c[1].number_input("Top-k", min_value=0, max_value=int(cfg.vocab_size), step=1, key=state.GEN_TOP_K,
                          help="Keep only the k most likely tokens (0 = off).")
top_p = c[2].slider("Top-p", 0.05, 1.0, step=0.05, key=state.GEN_TOP_P,
                    help="Keep the most likely tokens until their probability reaches p (1 = off).")
max_new = c[3].number_input("Max new tokens", min_value=1, max_value=500, step=1, key=state.GEN_MAX_NEW)
seed = c[4].number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=state.GEN_SEED,
                         help="Same seed and settings → same tokens.")
settings = compute.sampling_settings(temperature, top_k, top_p, seed)

b1, b2, b3, _ = st.columns([1, 1, 1, 4])
do_generate = b1.button("Generate", type="primary", icon=":material/play_arrow:", key="gen_btn_generate")
do_next = b2.button("Next token", icon=":material/skip_next:", key="gen_btn_next")
do_clear = b3.button("Clear", icon=":material/delete_sweep:", key="gen_btn_clear")

GEN_BUDGET_S = 30.0

try:
    if do_clear:
        state.set_gen_trace(None)
        trace = None
    if do_generate:
        trace = compute.start_trace(lm.key, lm.tokenizer, prompt, cfg.block_size, settings)
        with st.spinner("Generating…"):
            added = compute.extend_trace(lm.model, trace, int(max_new), budget_s=GEN_BUDGET_S)
        if added < int(max_new):
            st.warning(f"Stopped after {added} tokens ({GEN_BUDGET_S:.0f} s budget); press Next token to go on.")
        state.set_gen_trace(trace)
        st.session_state[state.GEN_SCRUB] = len(trace.steps)
    if do_next:
        if trace is None or trace.prompt_ids != compute.encode_text(
                lm.tokenizer, prompt, cfg.block_size, keep="end", what="prompt").ids:
            trace = compute.start_trace(lm.key, lm.tokenizer, prompt, cfg.block_size, settings)
        else:
            trace.settings = dict(settings)  # new settings apply from the next token on
        compute.extend_trace(lm.model, trace, 1)
        state.set_gen_trace(trace)
        st.session_state[state.GEN_SCRUB] = len(trace.steps)
except InputProblem as e:
    ui.show_problem(e)
except ValueError as e:  # settings lm_core refuses: say which
    ui.show_problem(e, "Change the sampling settings and try again.")

problem = st.session_state.pop("_gen_problem", None)
if problem:
    st.error(problem, icon=":material/error:")

if trace is None or not trace.steps:
    st.info("Press **Generate** for a whole continuation or **Next token** to go one step at a time.",
            icon=":material/lightbulb:")
    st.stop()

if trace.prompt_note:
    st.warning(trace.prompt_note, icon=":material/content_cut:")
if trace.branch_note:
    st.caption(f":material/call_split: {trace.branch_note}")
if any(s.truncated for s in trace.steps):
    st.caption(f"The text passed the model's context of {cfg.block_size} tokens: from then on the model "
               f"sees only the last {cfg.block_size} tokens (a sliding window).")

# -- the text: prompt in grey, generated tokens as chips --------------------------------------
prompt_text = html.escape(lm.tokenizer.decode(trace.prompt_ids))
chips = []
for i, s in enumerate(trace.steps):
    p = pieces_of([s.token_id])[0]
    style = "background:#fde2d8;border-color:#e4572e" if s.branched else ""
    chips.append(f'<span class="lm-gen" style="{style}" title="step {i + 1}: p={s.prob:.3f}">'
                 f'{html.escape(figures.visible(p))}</span>')
st.html("<style>.lm-out{font-family:ui-monospace,Menlo,monospace;font-size:14px;white-space:pre-wrap;"
        "line-height:1.9}.lm-out .lm-p{color:#6b7280}.lm-gen{background:#e6ebf7;border:1px solid #c7d2ee;"
        "border-radius:3px;padding:0 2px;margin:0 1px}</style>"
        f'<div class="lm-out"><span class="lm-p">{prompt_text}</span>{"".join(chips)}</div>')
st.caption(f"{len(trace.steps)} generated tokens (boxed; branched ones in orange). Generated text: "
           f"`{lm.tokenizer.decode([s.token_id for s in trace.steps])[:200]!r}`")

n = len(trace.steps)
if not 1 <= int(st.session_state.get(state.GEN_SCRUB) or 0) <= n:
    st.session_state[state.GEN_SCRUB] = n
if n > 1:
    at = st.slider("Step", 1, n, key=state.GEN_SCRUB,
                   help="Scrub back through the generation; the charts below show this step.")
else:
    at = 1
rec = trace.steps[at - 1]
ids_all = trace.ids
ctx_ids = ids_all[rec.context_start:rec.position]
ctx_labels = figures.token_labels(pieces_of(ctx_ids), start=rec.context_start)
drawn_piece = pieces_of([rec.token_id])[0]
cand_pieces = pieces_of([int(i) for i in rec.top_ids])
drawn_rank = [int(i) for i in rec.top_ids].index(rec.token_id)


def _branch(step_index: int, token_id: int) -> None:
    """Replace step ``step_index``'s token by ``token_id`` and generate on from there."""
    tr = state.gen_trace()
    if tr is None:
        return
    try:
        target = len(tr.steps)
        new = compute.branch_trace(tr, step_index, token_id, pieces_of)
        compute.extend_trace(lm.model, new, max(0, target - len(new.steps)), budget_s=GEN_BUDGET_S)
        state.set_gen_trace(new)
        st.session_state[state.GEN_SCRUB] = step_index + 1
    except (InputProblem, ValueError) as e:
        st.session_state["_gen_problem"] = str(e)


def _branch_from_chart() -> None:
    event = st.session_state.get(state.GEN_CANDIDATES) or {}
    for p in (event.get("selection") or {}).get("points") or []:
        cd = p.get("customdata")
        if isinstance(cd, dict):  # a typed array arrives as {"0": v}
            cd = list(cd.values())
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        idx = int(cd) if cd is not None else p.get("point_index")
        if idx is None:
            continue
        tr = state.gen_trace()
        step = int(st.session_state.get(state.GEN_SCRUB) or len(tr.steps)) - 1
        token = int(tr.steps[step].top_ids[idx])
        if token != tr.steps[step].token_id:
            _branch(step, token)
        return


left, right = st.columns([2, 3])
with left:
    ui.chart(figures.candidates_bar(cand_pieces, rec.top_before, rec.top_after, drawn_rank,
                                    title=f"Step {at}: candidates after {figures.visible(pieces_of([ids_all[rec.position - 1]])[0])}"),
             key=state.GEN_CANDIDATES, name=f"candidates-step-{at}", on_select=_branch_from_chart,
             selection_mode="points",
             caption="Most likely first. Grey: the model's probability (temperature 1); blue: what was actually "
                     "sampled from after temperature, top-k and top-p; orange: the drawn token. Click another "
                     "candidate to branch: generation continues from it.")
    others = [i for i in range(len(cand_pieces)) if i != drawn_rank]
    if others:
        bc1, bc2 = st.columns([3, 2], vertical_alignment="bottom")
        if st.session_state.get(state.GEN_BRANCH_PICK) not in others:
            st.session_state[state.GEN_BRANCH_PICK] = others[0]
        pick = bc1.selectbox("Continue from candidate", others, key=state.GEN_BRANCH_PICK,
                             format_func=lambda i: f"#{i + 1} {figures.visible(cand_pieces[i])} "
                                                   f"(p={rec.top_before[i]:.3f})")
        bc2.button("Branch here", icon=":material/call_split:", key="gen_btn_branch",
                   on_click=_branch, args=(at - 1, int(rec.top_ids[pick])))
    cand_df = pd.DataFrame({"rank": np.arange(1, len(cand_pieces) + 1), "token_id": rec.top_ids,
                            "piece": cand_pieces, "p_model": rec.top_before, "p_sampled": rec.top_after,
                            "drawn": [i == drawn_rank for i in range(len(cand_pieces))]})
    ui.csv_download(cand_df, f"candidates-step-{at}", key="gen_cand_csv", label="Probabilities CSV")
with right:
    ui.chart(figures.query_attention(rec.attention, ctx_labels, f"→ {figures.visible(drawn_piece)}",
                                     cfg.n_layer, cfg.n_head,
                                     title=f"Step {at}: attention of the position that predicted '{figures.visible(drawn_piece)}'"),
             key="gen_attn_row", name=f"generation-attention-step-{at}",
             caption="One row per head (layer by layer): how the last context position — the one whose "
                     "output predicted this token — spread its attention over the context. Darker = more.")

st.divider()
h1, h2, _ = st.columns([1, 1, 4])
if st.session_state.get(state.GEN_LAYER, 0) >= cfg.n_layer:
    st.session_state[state.GEN_LAYER] = 0
if st.session_state.get(state.GEN_HEAD, 0) >= cfg.n_head:
    st.session_state[state.GEN_HEAD] = 0
g_layer = h1.selectbox("Layer", list(range(cfg.n_layer)), key=state.GEN_LAYER)
g_head = h2.selectbox("Head", list(range(cfg.n_head)), key=state.GEN_HEAD)
shown = trace.steps[:at]
last_pos = shown[-1].position
pos_labels = figures.token_labels(pieces_of(ids_all[:last_pos]))
step_labels = [f"step {i + 1}: {figures.visible(pieces_of([s.token_id])[0])}" for i, s in enumerate(shown)]
g1, g2 = st.columns([3, 2])
with g1:
    ui.chart(figures.growing_attention([s.attention[g_layer, g_head] for s in shown],
                                       [s.context_start for s in shown], pos_labels, step_labels,
                                       f"Layer {g_layer}, head {g_head}"),
             key="gen_growing", name=f"generation-L{g_layer}-H{g_head}",
             caption="One row per generated step, up to the chosen step: where this head looked when the model "
                     "produced that token. Columns are positions in the whole text; blank cells were not "
                     "visible at that step (the future, or cut off by the context window).")
with g2:
    all_steps = trace.steps
    ui.chart(figures.prob_entropy_chart(
        [f"{i + 1}·{figures.visible(pieces_of([s.token_id])[0])}" for i, s in enumerate(all_steps)],
        [s.prob for s in all_steps], [s.entropy_bits for s in all_steps], current=at - 1),
        key="gen_conf", name="generation-confidence",
        caption="Blue: the model's probability of the token it drew (temperature 1). Orange: the entropy of "
                "its distribution in bits (0 = certain; high = many options). The shaded line is the chosen step.")
    steps_df = pd.DataFrame({
        "step": np.arange(1, len(all_steps) + 1), "token_id": [s.token_id for s in all_steps],
        "piece": [pieces_of([s.token_id])[0] for s in all_steps], "p_model": [s.prob for s in all_steps],
        "entropy_bits": [s.entropy_bits for s in all_steps], "branched": [s.branched for s in all_steps],
    })
    ui.csv_download(steps_df, "generation-steps", key="gen_steps_csv", label="Steps CSV")
