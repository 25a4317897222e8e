"""A training history, live or saved: loss, throughput, gradients, and the circuits forming.

Drawn by the Train page for the run it trains and for the saved history of the sidebar's model.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lm_core import metrics
from lm_core import ngram as lm_ngram
from lm_core import runs as lm_runs

from .. import figures, lesson_figures, resources, state
from ..core import circuits, lessons
from ..core.models import corpus_spec, recorded_head_scores, snapshot_stamp, snapshot_steps
from . import ui

NO_BASELINES = ("No n-gram baselines for this run: {why}. Runs trained now keep them in baselines.json "
                "(skipped for a text over 20 MB or a vocabulary over 4,096 tokens).")


def saved_baselines(lm) -> tuple[list[dict], str]:
    """A saved model's n-gram baselines (its ``baselines.json``; else computed from its corpus when
    that is cheap) and, when there are none, a sentence saying why."""
    if lm.path is not None:
        try:
            found = lm_runs.read_baselines(lm.path)
        except ValueError as e:
            return [], NO_BASELINES.format(why=str(e))
        if found:
            return found, ""
    try:
        return resources.corpus_baselines(lm.family, corpus_spec(lm), lm.tokenizer), ""
    except lessons.NoCorpus as e:
        return [], NO_BASELINES.format(why=str(e))


def head_score_history(recorded, run_dir) -> tuple[pd.DataFrame, str]:
    """The head scores of a run over training, and where they come from: recorded by the trainer
    at each evaluation, and computed from its weight snapshots before the record starts (runs
    from before the record, or one resumed by an older version), so a column once shown never
    goes away. Snapshots between recorded evaluations are not scored: the record is the curve."""
    recorded = recorded_head_scores(recorded)
    have = set(recorded["step"]) if len(recorded) else set()
    steps = snapshot_steps(run_dir) if run_dir is not None else []
    missing = [s for s in steps if not have or s < min(have)]
    if not missing or (not have and len(steps) < 2):
        return recorded, "recorded at each evaluation" if have else ""
    path = str(run_dir.resolve())
    per_step = [(s, resources.snapshot_probe_scores(path, s, snapshot_stamp(run_dir, s), len(steps))) for s in missing]
    computed = circuits.long_frame(per_step)
    if not have:
        return computed, f"computed from the run's {len(steps)} weight snapshots"
    both = pd.concat([recorded, computed], ignore_index=True).sort_values(["step", "kind", "layer", "head"],
                                                                           kind="stable", ignore_index=True)
    return both, f"recorded at each evaluation, and computed from {len(missing)} weight snapshots before that"


def circuits_view(scores: pd.DataFrame, source: str, bump, name: str, key_prefix: str, live: bool,
                  lines: bool = True, kind_key: str = state.CIRCUIT_KIND, log_steps: bool = False) -> None:
    """Head scores of every head over the steps: which circuits formed, and when (``lines``: also
    the one-line-per-head chart beside the heatmap; ``kind_key``: the session key of its metric
    radio, one per panel on a page; ``log_steps``: a logarithmic step axis)."""
    st.markdown("#### :material/hub: Circuits")
    if not len(scores):
        if live:
            st.caption("No head scores yet: they are measured at each evaluation on a fixed probe (random tokens "
                       "repeated twice), and appear here with the first one.")
        else:
            st.caption("This run recorded no head scores and kept no weight snapshots to measure them on, so "
                       "there is nothing to show here. Runs trained now record them.")
        return
    kinds = circuits.kinds_in(scores)
    if not kinds:
        st.caption("This run recorded head scores of kinds this version does not know, so there is nothing to show.")
        return
    if st.session_state.get(kind_key) not in kinds:
        st.session_state[kind_key] = kinds[0]
    kind = st.radio("Head score", kinds, key=kind_key, horizontal=True,
                    format_func=lambda k: metrics.head_metric(k).label, help=ui.metric_help(kinds))
    metric = metrics.head_metric(kind)
    z, steps, heads = circuits.matrix(scores, kind)
    label = metric.label
    marks = [bump.step] if bump is not None else []
    if bump is not None:
        focus = (bump.layer, bump.head)
    else:  # the head whose final score is the strongest (highest, or lowest where low means focused)
        focus = circuits.strongest_head(z, heads, kind)
    c1, c2 = st.columns([3, 2]) if lines else (st.container(), None)
    with c1:
        ui.chart(figures.head_scores_over_time(z, steps, heads, label, zrange=metric.value_range,
                                               marks=marks, log_steps=log_steps),
                 key=f"{key_prefix}_circuits_heat", name=f"circuits-{kind}-{name}",
                 caption=f"Every head (rows: layer · head) at each measured step (columns), coloured by its {label} "
                         f"score on a fixed probe of random tokens repeated twice ({source}). A row that lights up is "
                         f"a head taking on that job.")
    if c2 is None:
        ui.csv_download(scores, f"head-scores-{name}", key=f"{key_prefix}_circuits_csv", label="Head scores CSV")
        return
    with c2:
        ui.chart(figures.head_score_lines(z, steps, heads, label, highlight=focus, marks=marks, log_steps=log_steps),
                 key=f"{key_prefix}_circuits_lines", name=f"circuits-{kind}-lines-{name}",
                 caption=f"The same, one line per head (colour = layer); L{focus[0]} H{focus[1]} is drawn thick. "
                         + circuits.RULE_TEXT)
        ui.csv_download(scores, f"head-scores-{name}", key=f"{key_prefix}_circuits_csv", label="Head scores CSV")


def wall_tokens_per_s(hist: pd.DataFrame, window: int = 10) -> float | None:
    """Tokens per wall-clock second over the last ``window`` logged rows: ``tokens_seen`` over
    ``elapsed_s`` (evaluations, checkpoints and any waiting included, pauses excluded), what a
    person watching sees, not the per-step timer's flattering figure."""
    if not {"tokens_seen", "elapsed_s"} <= set(hist.columns) or len(hist) < 2:
        return None
    tail = hist[["tokens_seen", "elapsed_s"]].dropna().tail(window + 1)
    if len(tail) < 2:
        return None
    dt = float(tail["elapsed_s"].iloc[-1] - tail["elapsed_s"].iloc[0])
    return float(tail["tokens_seen"].iloc[-1] - tail["tokens_seen"].iloc[0]) / dt if dt > 0 else None


def history_metrics(hist: pd.DataFrame) -> None:
    """The latest numbers of a training history as tiles (cheap: the live view redraws them often)."""
    last = hist.iloc[-1].to_dict() if len(hist) else {}

    def num(v):
        return v if v is not None and v == v else None

    val = hist["val_loss"].dropna() if "val_loss" in hist else []
    bpc = hist["val_bpc"].dropna() if "val_bpc" in hist else []
    row = st.container(horizontal=True)  # a row that wraps before it cuts a label
    tl, gn = num(last.get("train_loss")), num(last.get("grad_norm"))
    tps = wall_tokens_per_s(hist)
    row.metric("Train loss", f"{tl:.3f}" if tl is not None else "–")
    row.metric("Val loss", f"{val.iloc[-1]:.3f}" if len(val) else "–")
    row.metric("Bits per character (val)", f"{bpc.iloc[-1]:.3f}" if len(bpc) else "–")
    row.metric("Tokens / s", f"{tps:,.0f}" if tps is not None else "–",
               help="Tokens per wall-clock second over the last logged rows: evaluations and checkpoints "
                    "included, pauses left out.")
    row.metric("Gradient norm", f"{gn:.3f}" if gn is not None else "–")


def history_view(hist, samples: list, name: str, key_prefix: str = "train", head_scores=None,
                 run_dir=None, live: bool = False, baselines=(), baselines_note: str = "",
                 reason: str | None = None) -> None:
    """Metrics and charts of a training history (live or saved), with the circuits forming, the
    n-gram ``baselines`` as reference lines, and where val stopped improving and the run stopped
    (``reason``: why it ended; None while it trains)."""
    history_metrics(hist)
    history_charts(hist, samples, name, key_prefix, head_scores, run_dir, live, baselines, baselines_note, reason)


LIVE_CHARTS = {
    "circuits": ":material/hub: Circuits",
    "gradients": ":material/stacked_line_chart: Gradient norms",
    "updates": ":material/trending_up: Update ratios",
    "speed": ":material/speed: Speed",
}
LIVE_NOTE = ("While the run trains, the loss and one more chart of your choice redraw; every chart redrawn "
             "costs the browser CPU the run needs. All charts are shown when the run is paused or ends.")


def history_charts(hist, samples: list, name: str, key_prefix: str = "train", head_scores=None,
                   run_dir=None, live: bool = False, baselines=(), baselines_note: str = "",
                   reason: str | None = None, only: str | None = None) -> None:
    """The charts of a training history (see :func:`history_view`). ``only`` (a key of
    :data:`LIVE_CHARTS`): the loss, the latest sample and that one chart, the live view of a run
    while it trains (each chart the browser redraws takes CPU from the run)."""
    scores, source = head_score_history(head_scores, run_dir)
    bump = circuits.induction_bump(scores)

    c1, c2 = st.columns([3, 2])
    with c1:
        _loss_panel(hist, name, key_prefix, run_dir, baselines, baselines_note, reason, bump)
    with c2:
        if only is None:
            _speed_chart(hist, name, key_prefix)
        _sample_panel(samples)
    if only is not None:
        if only == "circuits":
            circuits_view(scores, source, bump, name, key_prefix, live=live, lines=False)
        elif only == "gradients":
            _grad_chart(hist, name, key_prefix)
        elif only == "updates":
            _update_chart(hist, name, key_prefix)
        else:
            _speed_chart(hist, name, key_prefix)
        return
    circuits_view(scores, source, bump, name, key_prefix, live=live)
    c3, c4 = st.columns(2)
    with c3:
        _grad_chart(hist, name, key_prefix)
    with c4:
        _update_chart(hist, name, key_prefix)


def _loss_panel(hist, name, key_prefix, run_dir, baselines, baselines_note, reason, bump) -> None:
    log_y = st.toggle("Log scale", key=state.TRAIN_LOG_Y)
    run_end = lessons.run_marks(hist, reason)
    marks = ([(bump.step, bump.label())] if bump is not None else []) + run_end.chart_marks()
    caption = ("Cross-entropy per token against the training step: the line is each step's training "
               "batch, the diamonds the held-out validation text (the last 10% of the corpus). "
               "Lower is better; val above train means over-fitting.")
    if bump is not None:
        caption += (f" The dashed line at step {bump.step:,}: an induction head (L{bump.layer} H{bump.head}) "
                    f"forms; see Circuits below.")
    if run_end.best_step is not None:
        kept = run_dir is not None and (run_dir / lm_runs.BEST_FILE).exists()
        caption += (f" 'val best' marks step {run_end.best_step:,}, where val loss was lowest "
                    f"({run_end.best_val:.3f})" + ("; its weights are kept in best.safetensors" if kept else "")
                    + ". If val rises after it while train keeps falling, the model is memorising the "
                      "training text: add dropout or early stopping (advanced settings).")
    if baselines:
        passed = lm_ngram.passed_at(hist, baselines)
        fig = lesson_figures.loss_with_baselines(hist, baselines, passed, log_y=log_y, marks=marks,
                                                 title="Loss against the n-gram baselines")
        beaten = [f"the {b} at step {s:,}" for b, s in passed.items() if s is not None]
        caption += (" Dotted lines: the val loss of n-gram models that predict from only the last 0–3 tokens "
                    "(counted on the same train split); a ring marks where the transformer passes each"
                    + (f" — here {', '.join(beaten)}" if beaten else "") + ". Below the 4-gram line, "
                    "the model uses context further back than three tokens: that is what attention buys.")
    else:
        fig = figures.loss_curves(hist, log_y=log_y, marks=marks)
    ui.chart(fig, key=f"{key_prefix}_loss_chart", name=f"loss-{name}", caption=caption)
    if baselines:
        ui.csv_download(pd.DataFrame(list(baselines)), f"baselines-{name}", key=f"{key_prefix}_baselines_csv",
                        label="Baselines CSV")
    elif baselines_note:
        st.caption(baselines_note)
    ui.csv_download(hist, f"history-{name}", key=f"{key_prefix}_hist_csv", label="History CSV")


def _sample_panel(samples: list) -> None:
    st.markdown("**Latest sample**")
    if samples:
        s = samples[-1]
        st.caption(f"Generated at step {s['step']} from a newline, temperature 0.8:")
        st.code(s["text"][:800], language=None)
    else:
        st.caption("The first sample appears at the first evaluation.")


def _speed_chart(hist, name: str, key_prefix: str) -> None:
    ui.chart(figures.throughput_chart(hist), key=f"{key_prefix}_tps_chart", name=f"throughput-{name}",
             caption="Left: training speed in tokens per second. Right: bits per character "
                     "(line: training batch; diamonds: validation) — comparable across tokenizers.")


def _grad_chart(hist, name: str, key_prefix: str) -> None:
    ui.chart(figures.grad_norm_heatmap(hist), key=f"{key_prefix}_grad_chart", name=f"gradient-norms-{name}",
             caption="Gradient norm per parameter group (rows: embeddings, each block's attention and MLP, the "
                     "final norm) over the steps (columns); colour = log₁₀ of the norm. Bright stripes show "
                     "where learning is happening.")


def _update_chart(hist, name: str, key_prefix: str) -> None:
    ui.chart(figures.update_ratio_chart(hist), key=f"{key_prefix}_update_chart", name=f"update-ratios-{name}",
             caption="Size of each step's weight change relative to the weights, per group (log scale). "
                     "Around 10⁻³ (dashed) is the usual healthy range; much higher means the learning rate "
                     "is too high.")
