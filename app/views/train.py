"""Train: pick a corpus, a tokenizer and a model size, then watch the model learn, live."""

from __future__ import annotations

import contextlib
import re
import time

import streamlit as st

import lm_core
from lm_core import corpora
from lm_core import hub as lm_hub
from lm_core.data import check_text_fits
from lm_core.mechanics import layout
from lm_core.presets import PRESETS
from lm_core.tokenizers import MIN_BPE_VOCAB_SIZE
from lm_core.recipes import build_trainer

from app import lesson_figures, resources, state
from app.active import active_model
from app.core import estimates, finetune, lessons
from app.core.corpus import Corpus
from app.core.models import runs_root
from app.core.jobs import ACTIVE, AlreadyTraining, NotYours, TrainingJob
from app.widgets import ui
from app.widgets.history import LIVE_CHARTS, LIVE_NOTE, history_charts, history_metrics, history_view, saved_baselines
from app.widgets.hub import hub_checkpoints_section

# While a run is active the page redraws itself: every redraw costs the CPU the run trains on, in
# the server and, most, in the browser (a Plotly chart redraw takes Chromium 0.1–0.6 s of CPU even
# when its figure did not change). Measured with bench/bench_live.py --only watch.
POLL_S = 2.0                # progress and the latest numbers: a few small elements
CHARTS_S = 10.0             # the loss and the one chart picked to watch live (history.LIVE_CHARTS)
MAX_SHARE = 4               # tabs watching one run share one refresh budget, up to this many
WATCH_WINDOW_S = 2.5 * POLL_S * MAX_SHARE  # a tab that has not polled for this long has gone
# No transitions in the live view: an animated progress bar or fade is drawn frame by frame, in
# software on a machine without a GPU, while the run wants the CPU.
NO_TRANSITIONS = ("<style>[data-testid=stProgress] *, [data-testid=stElementContainer] "
                  "{transition: none !important; animation: none !important}</style>")
PREVIEW_CHARS = 600
SOURCES = ["Built-in", "Tiny Shakespeare", "Upload a .txt", "Paste text", "Synthetic task"]
DEFAULT_PRESET = "default"
INDUCTION_PRESET = "induction"
INDUCTION_INSPECT_TEXT = "xkcdmzqwhtbf" * 2  # within the preset's 32-token context
NO_LIVE_BASELINES = ("No n-gram baselines for this run: its text is over 20 MB or its vocabulary over 4,096 "
                     "tokens, where counting them would hold up the start.")
AUTO_MEASURE_FLOPS = 3e10   # measure the step time automatically below this much work per step
ONE_STEP_FLOPS = 1e11       # above this much work per step, the button times one step (a 124 M model: seconds each)
LAYOUT_PRESETS = ("nanogpt-cpu", "llama-cpu")  # the same size and recipe in GPT-2's and in Llama's layout
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")  # set by the widgets, not the preset

ui.page_header("Train", "Train a small GPT on a text of your choice and watch its loss, gradients and "
               "weight updates as it learns. Training runs on the server; you can leave this page or "
               "refresh, and come back to it.")

reg = resources.registry()
job = reg.active_job() or reg.latest(owner=ui.browser_id())
active = job is not None and job.active


# -- settings from a preset ---------------------------------------------------------------------

SETTING_KEYS = {
    state.TRAIN_N_LAYER: ("model", "n_layer"), state.TRAIN_N_HEAD: ("model", "n_head"),
    state.TRAIN_N_EMBD: ("model", "n_embd"), state.TRAIN_BLOCK: ("model", "block_size"),
    state.TRAIN_DROPOUT: ("model", "dropout"), state.TRAIN_BATCH: ("train", "batch_size"),
    state.TRAIN_LR: ("train", "learning_rate"), state.TRAIN_STEPS: ("train", "max_steps"),
}


def _preset_value(name: str, part: str, field: str):
    p = PRESETS[name]
    d = p.model if part == "model" else p.train
    if field in d:
        return d[field]
    base = lm_core.ModelConfig() if part == "model" else lm_core.TrainConfig()
    return getattr(base, field)


def _preset_layout(name: str, n_embd: int) -> dict:
    """The preset's layout (norm, positions, MLP, key/value heads, biases), which the widgets do not
    set; its MLP width in proportion to the width chosen."""
    model = PRESETS[name].model
    out = {k: v for k, v in model.items() if k not in SHAPE_FIELDS}
    if "d_mlp" in out:
        out["d_mlp"] = max(1, round(out["d_mlp"] * n_embd / model.get("n_embd", n_embd)))
    return out


def _apply_mode() -> None:
    """Switching between a new model and fine-tuning fills the settings each one starts from."""
    ss = st.session_state
    if ss.get(state.TRAIN_INIT) != "pretrained":
        _apply_preset()
        return
    keys = {"block_size": state.TRAIN_BLOCK, "batch_size": state.TRAIN_BATCH, "learning_rate": state.TRAIN_LR,
            "max_steps": state.TRAIN_STEPS, "dropout": state.TRAIN_DROPOUT}
    for field, key in keys.items():
        ss[key] = finetune.CPU_SETTINGS[field]
    ss[state.TRAIN_PATIENCE] = 0


def _apply_preset() -> None:
    name = st.session_state.get(state.TRAIN_PRESET, DEFAULT_PRESET)
    for key, (part, field) in SETTING_KEYS.items():
        v = _preset_value(name, part, field)
        st.session_state[key] = float(v) if field in ("dropout", "learning_rate") else int(v)
    p = PRESETS[name]
    st.session_state[state.TRAIN_PATIENCE] = int(p.train.get("early_stopping_patience") or 0)
    budget = p.train.get("max_seconds")
    st.session_state[state.TRAIN_MAX_MINUTES] = (max(1, round(budget / 60)) if budget
                                                 else state.WIDGET_DEFAULTS[state.TRAIN_MAX_MINUTES])


if st.session_state.get(state.TRAIN_PRESET) not in PRESETS:
    st.session_state[state.TRAIN_PRESET] = DEFAULT_PRESET
if any(k not in st.session_state for k in (*SETTING_KEYS, state.TRAIN_PATIENCE)):
    _apply_preset()


# -- 1. corpus ---------------------------------------------------------------------------------


def _set_corpus(name: str, spec: str, text: str) -> None:
    state.set_corpus(Corpus(name=name, spec=spec, text=text))


def corpus_section() -> None:
    st.subheader("1 · Corpus")
    source = st.radio("Source", SOURCES, key=state.TRAIN_SOURCE, horizontal=True,
                      label_visibility="collapsed")
    try:
        if source == "Built-in":
            spec = next(iter(corpora.BUILTIN_CORPORA))
            st.caption(corpora.BUILTIN_CORPORA[spec])
            cur = state.corpus()
            if cur is None or cur.spec != spec:
                _set_corpus(spec, spec, resources.corpus_text(spec))
        elif source == "Synthetic task":
            tasks = list(corpora.SYNTHETIC_TASKS)
            if st.session_state.get(state.TRAIN_SYNTH) not in tasks:
                st.session_state[state.TRAIN_SYNTH] = tasks[0]
            task = st.selectbox("Task", tasks, key=state.TRAIN_SYNTH)
            t = corpora.SYNTHETIC_TASKS[task]
            st.caption(f"{t.description} Example: `{t.example}`")
            spec = f"synthetic:{task}"
            cur = state.corpus()
            if cur is None or cur.spec != spec:
                _set_corpus(spec, spec, resources.corpus_text(spec))
        elif source == "Tiny Shakespeare":
            st.caption("40,000 lines of Shakespeare (1.1 MB), nanoGPT's benchmark. A copy ships with LM Lens, "
                       "so it works offline; you can also download a fresh copy from its public home.")
            cur = state.corpus()
            if cur is None or cur.spec.partition("?")[0] != "tiny-shakespeare":  # a slice (the demo's) stays
                _set_corpus("tiny-shakespeare", "tiny-shakespeare", resources.corpus_text("tiny-shakespeare"))
            if st.button("Download a fresh copy", icon=":material/download:", key="train_btn_download"):
                bar = st.empty()
                bar.progress(0.0, text="Connecting…")

                def progress(done: int, total: int | None) -> None:
                    frac = min(1.0, done / total) if total else 0.0
                    bar.progress(frac, text=f"Downloading… {done / 1e6:.2f} MB"
                                 + (f" of {total / 1e6:.2f} MB" if total else ""))

                try:
                    text = corpora.load_tiny_shakespeare(progress=progress, fresh=True)
                finally:
                    bar.empty()  # never leave "Connecting…" above an error
                _set_corpus("tiny-shakespeare", "tiny-shakespeare", text)
                st.success("Downloaded and checked a fresh copy of Tiny Shakespeare.", icon=":material/check_circle:")
        elif source == "Upload a .txt":
            up = st.file_uploader("Text file (UTF-8, up to 50 MB)", type=["txt", "md", "py", "csv"],
                                  key="train_upload")
            if up is not None:
                cur = state.corpus()
                name = f"upload: {up.name}"
                if cur is None or cur.name != name:
                    text = corpora.corpus_from_bytes(up.getvalue(), f"The file {up.name!r}")
                    _set_corpus(name, "", text)
        elif source == "Paste text":
            st.text_area("Training text", key=state.TRAIN_PASTE, height=140,
                         placeholder="Paste a few thousand characters or more…")
            if st.button("Use this text", key="train_btn_paste"):
                text = corpora.corpus_from_text(st.session_state.get(state.TRAIN_PASTE, ""), "The pasted text")
                _set_corpus("pasted text", "", text)
    except ValueError as e:
        ui.show_problem(e, "The corpus already loaded (if any) is kept.")

    cur = state.corpus()
    if cur is None:
        st.info("Choose a corpus above.", icon=":material/lightbulb:")
        return
    stats = resources.corpus_stats(cur.text)
    st.markdown(f"**Corpus:** `{cur.name}`")  # in full: a metric tile would cut a long file name
    m = st.columns(3)
    m[0].metric("Size", f"{stats['bytes'] / 1e6:.2f} MB" if stats["bytes"] >= 1e5 else f"{stats['bytes'] / 1e3:.1f} kB")
    m[1].metric("Characters", f"{stats['chars']:,}")
    m[2].metric("Distinct characters", f"{stats['distinct_chars']:,}")
    with st.expander("Preview", expanded=False):
        st.code(cur.text[:PREVIEW_CHARS] + ("…" if len(cur.text) > PREVIEW_CHARS else ""), language=None,
                wrap_lines=True)  # a stream with no line breaks (synthetic:induction) stays readable


# -- 2. tokenizer ------------------------------------------------------------------------------


def tokenizer_section() -> None:
    st.subheader("2 · Tokenizer")
    if st.session_state.get(state.TRAIN_INIT) == "pretrained":
        st.caption("Fine-tuning keeps the pretrained model's own tokenizer (read with its weights), so its "
                   "embeddings still mean the same tokens.")
        return
    c1, c2, c3 = st.columns([2, 1, 2])
    kind = c1.radio("Tokenizer", ["char", "bpe"], key=state.TRAIN_TOKENIZER, horizontal=True,
                    format_func=lambda k: {"char": "Characters", "bpe": "Byte-level BPE"}[k])
    if kind == "bpe":
        c2.number_input("Vocabulary size", min_value=MIN_BPE_VOCAB_SIZE, max_value=16384, step=64,
                        key=state.TRAIN_VOCAB)
    cur = state.corpus()
    if cur is not None:
        if kind == "char":
            vocab = resources.corpus_stats(cur.text)["distinct_chars"] + 1
            c3.metric("Tokens per character", "1.00", help=f"Vocabulary: {vocab} (every distinct character + ⟨unk⟩)")
        else:
            tpc, vocab = resources.tokens_per_char(cur.text, "bpe", int(st.session_state[state.TRAIN_VOCAB]))
            c3.metric("Tokens per character", f"{tpc:.2f}", help=f"Vocabulary: {vocab} (measured on the first 200k characters)")


# -- 3. model and training settings ------------------------------------------------------------


def settings_section() -> tuple[lm_core.ModelConfig | None, dict | None, dict | None]:
    """The model and training settings: ``(model config, train overrides, fine-tuning or None)``,
    or Nones (with an error shown) when they do not fit."""
    st.subheader("3 · Model and training")
    st.radio("Start from", ["scratch", "pretrained"], key=state.TRAIN_INIT, horizontal=True, on_change=_apply_mode,
             format_func=lambda k: {"scratch": "A new model (random weights)",
                                    "pretrained": "A pretrained model (fine-tune)"}[k])
    if st.session_state[state.TRAIN_INIT] == "pretrained":
        return _finetune_settings()
    c1, c2 = st.columns([2, 3])
    c1.selectbox("Preset", list(PRESETS), key=state.TRAIN_PRESET, on_change=_apply_preset,
                 help="Fills the settings below; the corpus stays the one chosen above.")
    name = st.session_state[state.TRAIN_PRESET]
    c2.caption(f"{PRESETS[name].description}. Layout: "
               f"{layout(lm_core.ModelConfig(**PRESETS[name].model)).summary()}.")
    with st.expander("Advanced settings", expanded=False):
        a = st.columns(4)
        a[0].number_input("Layers", 1, 48, step=1, key=state.TRAIN_N_LAYER)
        a[1].number_input("Heads", 1, 64, step=1, key=state.TRAIN_N_HEAD)
        a[2].number_input("Width (n_embd)", 8, 4096, step=8, key=state.TRAIN_N_EMBD)
        a[3].number_input("Context (block size)", 4, 2048, step=8, key=state.TRAIN_BLOCK)
        b = st.columns(4)
        b[0].number_input("Batch size", 1, 1024, step=1, key=state.TRAIN_BATCH)
        b[1].number_input("Learning rate", 1e-6, 1.0, step=1e-4, format="%.5f", key=state.TRAIN_LR)
        b[2].number_input("Steps", 1, 1_000_000, step=100, key=state.TRAIN_STEPS)
        b[3].number_input("Dropout", 0.0, 0.9, step=0.05, key=state.TRAIN_DROPOUT)
        d = st.columns(2)
        d[0].number_input("Time budget (minutes)", 1, 24 * 60, step=5, key=state.TRAIN_MAX_MINUTES,
                          help="The run stops by itself after this much training time, even if nobody is watching.")
        d[1].number_input("Early stopping patience (evaluations; 0 = off)", 0, 1000, step=1, key=state.TRAIN_PATIENCE,
                          help="Stop the run when the val loss has not improved for this many evaluations in a row. "
                               "Either way the weights of the best val loss are kept in best.safetensors in the "
                               "run folder, and the loss chart marks that step.")
        st.caption("Against over-fitting (val loss rising while train loss falls): **dropout** zeroes a random "
                   "fraction of activations at each training step, so the model cannot lean on memorised "
                   "details; **early stopping** ends the run once val stops improving, keeping the best "
                   "step's weights (best.safetensors).")

    ss = st.session_state
    cur = state.corpus()
    if ss[state.TRAIN_TOKENIZER] == "char":
        vocab = (resources.corpus_stats(cur.text)["distinct_chars"] + 1) if cur else 66
    else:
        vocab = int(ss[state.TRAIN_VOCAB])
    try:
        mc = lm_core.ModelConfig(vocab_size=int(vocab), block_size=int(ss[state.TRAIN_BLOCK]),
                                 n_layer=int(ss[state.TRAIN_N_LAYER]), n_head=int(ss[state.TRAIN_N_HEAD]),
                                 n_embd=int(ss[state.TRAIN_N_EMBD]), dropout=float(ss[state.TRAIN_DROPOUT]),
                                 **_preset_layout(name, int(ss[state.TRAIN_N_EMBD])))
        train_over = _train_overrides(name)
        lm_core.TrainConfig(**train_over)
    except ValueError as e:
        ui.show_problem(e, "Change the advanced settings so that they fit together.")
        return None, None, None
    if cur is not None:  # a corpus too short for the context is refused now, not at Start
        tpc = 1.0 if ss[state.TRAIN_TOKENIZER] == "char" else \
            resources.tokens_per_char(cur.text, "bpe", int(ss[state.TRAIN_VOCAB]))[0]
        try:
            check_text_fits(cur.text, mc.block_size, tpc)
        except ValueError as e:
            ui.show_problem(e, "Choose a longer corpus (section 1) or a smaller context (block size) in the "
                               "advanced settings.")
            return None, None, None
    _estimate(mc)
    return mc, train_over, None


def _finetune_settings() -> tuple[lm_core.ModelConfig | None, dict | None, dict | None]:
    """Fine-tuning: the pretrained model, what stays frozen, and settings a CPU can carry."""
    ss = st.session_state
    a = st.columns([3, 1.3, 2, 1])
    a[0].text_input("Pretrained model (hub name or folder)", key=state.TRAIN_FT_MODEL,
                    help=f"A Hugging Face hub name such as {', '.join(finetune.SUGGESTED)} (downloaded once, then "
                         "read from the cache), or a local folder written by save_pretrained (config.json, "
                         "model.safetensors, tokenizer.json).")
    a[1].text_input("Revision (optional)", key=state.TRAIN_FT_REVISION,
                    help="A branch, tag or commit of a hub model, such as Pythia's step1000; empty: its latest weights.")
    a[2].selectbox("Freeze", list(finetune.FREEZE_CHOICES), format_func=finetune.FREEZE_CHOICES.get,
                   key=state.TRAIN_FT_FREEZE,
                   help="Frozen weights keep their pretrained values and stay out of the optimizer: less work per "
                        "step (GPT-2 small with all but its last 2 blocks frozen: half the time per step on a CPU), "
                        "and less of what the model knew is lost. With 'All but the last N blocks', the top N "
                        "blocks, the final norm and the unembedding train.")
    a[3].number_input("N", 1, 96, step=1, key=state.TRAIN_FT_KEEP, help="Blocks at the top that keep training.",
                      disabled=ss[state.TRAIN_FT_FREEZE] != "all-but-last")
    name, rev = ss[state.TRAIN_FT_MODEL].strip(), ss[state.TRAIN_FT_REVISION].strip() or None
    # the picker's facts: a curated model's with no network, another's from its config.json alone
    facts, problem = resources.model_facts(name, lm_hub.endpoint()) if name else (None, None)
    if facts and ss.get(state.TRAIN_FT_SHAPE_OF) != name:  # a new model: the default context fits its positions
        ss[state.TRAIN_FT_SHAPE_OF] = name
        if facts.config.pos == "learned":
            ss[state.TRAIN_BLOCK] = min(int(ss[state.TRAIN_BLOCK]), facts.config.block_size)
    b = st.columns(5)
    b[0].number_input("Context (block size)", 4, 2048, step=8, key=state.TRAIN_BLOCK)
    b[1].number_input("Batch size", 1, 1024, step=1, key=state.TRAIN_BATCH)
    b[2].number_input("Learning rate", 1e-7, 1.0, step=1e-5, format="%.6f", key=state.TRAIN_LR)
    b[3].number_input("Steps", 1, 1_000_000, step=50, key=state.TRAIN_STEPS)
    b[4].number_input("Time budget (minutes)", 1, 24 * 60, step=5, key=state.TRAIN_MAX_MINUTES)
    if not name:
        st.info("Type a pretrained model's hub name (such as gpt2) or a local folder.", icon=":material/lightbulb:")
        return None, None, None
    try:
        if problem:
            raise ValueError(problem)
        cfg = facts.config
        freeze = finetune.freeze_spec(ss[state.TRAIN_FT_FREEZE], int(ss[state.TRAIN_FT_KEEP]), cfg.n_layer)
        mc = finetune.model_settings(cfg, int(ss[state.TRAIN_BLOCK]), finetune.CPU_SETTINGS["dropout"])
        train_over = {**_train_overrides(None, finetune.TRAIN_SETTINGS), "snapshots": finetune.snapshots_for(cfg.n_params)}
        lm_core.TrainConfig(**train_over)
    except ValueError as e:
        ui.show_problem(e, "Change the model name, the revision or the settings above; nothing else changed.")
        return None, None, None
    fetch = (f" Start downloads it first (about {facts.download_bytes / 1e6:,.0f} MB, once)."
             if facts.download_bytes and lm_hub.cached_snapshot(name, rev) is None else "")
    st.caption(f"**{name}**{f' at {rev}' if rev else ''}: {cfg.n_layer} layers × {cfg.n_head} heads × {cfg.n_embd}, "
               f"context {cfg.block_size:,}, vocabulary {cfg.vocab_size:,} · {facts.layout}. The run starts from "
               f"its weights and tokenizer; it keeps {mc.block_size} positions of context.{fetch}")
    _estimate(mc, freeze)
    return mc, train_over, dict(init_from=name, revision=rev, freeze=freeze)


def _estimate(mc: lm_core.ModelConfig, freeze: str | None = None) -> None:
    """Parameters, tokens per step and the measured time per step (automatic for a small model,
    a button for a large one), before Start."""
    ss = st.session_state
    tokens_per_step = int(ss[state.TRAIN_BATCH]) * mc.block_size
    flops = 6 * mc.n_params * tokens_per_step
    key = (mc.to_dict(), int(ss[state.TRAIN_BATCH]), freeze)
    est = ss.get(state.TRAIN_ESTIMATE)
    per_step = est[1] if est and est[0] == repr(key) else None
    m = st.columns([1, 1, 1, 2], vertical_alignment="center")
    m[0].metric("Parameters", f"{mc.n_params / 1e6:.2f} M" if mc.n_params >= 1e5 else f"{mc.n_params / 1e3:.1f} k")
    m[1].metric("Tokens per step", f"{tokens_per_step:,}")
    if per_step is None and not active and flops <= AUTO_MEASURE_FLOPS:
        with st.spinner("Measuring the time per step on this machine…"):
            per_step = resources.step_time(mc.to_dict(), int(ss[state.TRAIN_BATCH]), freeze)
        ss[state.TRAIN_ESTIMATE] = (repr(key), per_step)
    if per_step is None:
        one = flops > ONE_STEP_FLOPS
        if m[3].button("Measure time per step", key="train_btn_measure", icon=":material/timer:",
                       help="Runs " + ("two training steps of this shape (a 124 M model: half a minute or more on a "
                                       "laptop CPU" if one else "a few training steps of this shape (a few seconds")
                            + "; slower while a run trains)."):
            with st.spinner("Measuring the time per step on this machine…"):
                per_step = resources.step_time(mc.to_dict(), int(ss[state.TRAIN_BATCH]), freeze, 1 if one else 3)
            ss[state.TRAIN_ESTIMATE] = (repr(key), per_step)
    if per_step is None:  # not measured yet: a first guess, said to be one
        rough = estimates.rough_step_time(mc, int(ss[state.TRAIN_BATCH]), resources.flops_per_s())
        m[2].caption(f"Roughly {estimates.format_seconds(rough)} per step or more, from this machine's matmul "
                     f"speed; measure for the real time.")
    else:
        steps = int(ss[state.TRAIN_STEPS])
        total = min(per_step * steps, 60 * int(ss[state.TRAIN_MAX_MINUTES]))
        m[2].metric("Time per step", estimates.format_seconds(per_step), help="Measured here, without evaluations.")
        m[3].caption(f"≈ {estimates.format_seconds(total)} for {steps:,} steps"
                     + (" (the time budget ends it first)" if per_step * steps > 60 * int(ss[state.TRAIN_MAX_MINUTES]) else "")
                     + f" · ≈ {tokens_per_step / per_step:,.0f} tokens/s")


def _train_overrides(preset_name: str | None, base: dict | None = None) -> dict:
    """The TrainConfig fields of a run started here: the preset's (or ``base``'s) recipe with the
    widgets' values and intervals scaled to the number of steps."""
    ss = st.session_state
    recipe = PRESETS[preset_name].train if preset_name else (base or {})
    steps = int(ss[state.TRAIN_STEPS])
    # A preset's folder-size settings (the shipped default keeps no snapshots) do not apply here: a
    # run trained in the app keeps its weight snapshots, for time travel and the circuits panel.
    skip = ("max_seconds", "schedule", "snapshots", "save_best", "keep_resume_state")
    over = {k: v for k, v in recipe.items() if k not in skip}
    over.update(
        batch_size=int(ss[state.TRAIN_BATCH]), learning_rate=float(ss[state.TRAIN_LR]), max_steps=steps,
        max_seconds=60.0 * int(ss[state.TRAIN_MAX_MINUTES]),
        eval_interval=max(10, min(int(over.get("eval_interval", 250)), max(10, steps // 8))),
        log_interval=max(1, min(10, steps // 50 or 1)),
        checkpoint_interval=max(50, min(int(over.get("checkpoint_interval", 500)), steps)),
        early_stopping_patience=int(ss[state.TRAIN_PATIENCE]) or None,
    )
    if preset_name == INDUCTION_PRESET:
        # head scores are recorded at each evaluation: ~20 of them draw the induction head forming
        over["eval_interval"] = max(10, steps // 20)
    over["warmup_steps"] = min(int(over.get("warmup_steps", 100)), max(0, steps // 10))
    over["min_lr"] = min(float(over.get("min_lr", 1e-4)), over["learning_rate"])
    if recipe.get("schedule") == "time":
        over["schedule"] = "time"
    return over


# -- 4. run controls -----------------------------------------------------------------------------


def _run_id(corpus_name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", corpus_name.lower()).strip("-")[:24] or "run"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


PREPARING = "Preparing the run (tokenizer, model, first checkpoint)…"


def _start(mc: lm_core.ModelConfig, train_over: dict, name: str | None = None, ft: dict | None = None,
           note=None) -> bool:
    """Start a run (its folder named after ``name``, else the corpus; ``ft``: fine-tune a pretrained
    model, ``init_from`` / ``revision`` / ``freeze``); True when it started (else a message says why)."""
    cur = state.corpus()
    if cur is None:
        st.error("Choose a corpus first (section 1).", icon=":material/error:")
        return False
    ss = st.session_state
    corpus_name = cur.name.replace("upload: ", "")
    run_id = _run_id(name or (finetune.run_name(ft["init_from"], corpus_name) if ft else corpus_name))
    run_dir = runs_root() / run_id
    bpe = ss[state.TRAIN_TOKENIZER] == "bpe"
    if ft:  # the pretrained model's layout and tokenizer: only the context and dropout are set here
        kw = dict(model_overrides={"block_size": mc.block_size, "dropout": mc.dropout}, **ft)
    else:
        kw = dict(tokenizer_kind=ss[state.TRAIN_TOKENIZER], vocab_size=int(ss[state.TRAIN_VOCAB]) if bpe else None,
                  model_overrides={k: v for k, v in mc.to_dict().items() if k != "vocab_size"})

    def make() -> TrainingJob:
        # the run folder is built here, so a setting that does not fit is said at once; its own
        # process then trains it (app.training); a fine-tuning run's config.json keeps init_from
        trainer = build_trainer(cur.spec or None, train_overrides=train_over, run_dir=run_dir, intervals="live",
                                corpus_text=cur.text, **kw)  # without a spec (an upload, a paste): kept as corpus.txt
        return TrainingJob(run_id=run_id, run_dir=run_dir, tokenizer=trainer.tokenizer, corpus_name=cur.name,
                           model_config=trainer.model.config, train_config=trainer.config)

    what = (f"Loading {ft['init_from']} (a hub model downloads once: GPT-2 small is about 550 MB) and preparing "
            f"the run…" if ft else PREPARING)
    # said at once, in the live view's own words, while the run folder is written; the page is
    # redrawn with the live view when the run has started
    if note is None:
        note = st.empty()
    note.progress(0.0, text=f"**starting** · {what}")
    try:
        # a hub model may take a minute to download: something moves meanwhile
        with st.spinner("Downloading or loading the pretrained model…") if ft else contextlib.nullcontext():
            reg.start(run_id, make, owner=ui.browser_id())
        state.put(state.TRAIN_NOTICE, f"Started run '{run_id}'. Pick it in the sidebar to inspect the "
                                      f"model while it learns.")
        return True
    except AlreadyTraining as e:
        st.warning(str(e), icon=":material/warning:")
    except ValueError as e:
        ui.show_problem(e, "Change the settings or the corpus and press Start training again.")
    except OSError as e:
        ui.show_problem(e, f"Could not write the run folder under {runs_root()}; check that it is writable.")
    note.empty()  # it did not start (said above); on a start the note stays until the page is redrawn
    return False


def _load_preset(preset_name: str, source: str, problem_key: str) -> bool:
    """Fill the settings with a preset, its corpus and its tokenizer (a one-click demo). False,
    with the reason kept under ``problem_key`` for the demo's box, when its corpus cannot load."""
    ss = st.session_state
    preset = PRESETS[preset_name]
    ss[state.TRAIN_SOURCE] = source
    try:
        _set_corpus(preset.corpus, preset.corpus, resources.corpus_text(preset.corpus))
    except ValueError as e:
        ss[problem_key] = str(e)
        return False
    ss[state.TRAIN_TOKENIZER] = preset.tokenizer
    ss[state.TRAIN_PRESET] = preset_name
    ss[state.TRAIN_INIT] = "scratch"
    _apply_preset()
    return True


def _fill_induction() -> None:
    """"Train an induction model": the induction preset with its corpus and tokenizer, started on this run."""
    ss = st.session_state
    ss[state.TRAIN_SYNTH] = PRESETS[INDUCTION_PRESET].corpus.split(":", 1)[1]
    if not _load_preset(INDUCTION_PRESET, "Synthetic task", state.TRAIN_INDUCTION_PROBLEM):
        return
    ss[state.TRAIN_START_INDUCTION] = True
    if ss.get(state.INSPECT_TEXT, state.DEFAULT_INSPECT_TEXT) == state.DEFAULT_INSPECT_TEXT:
        # the Attention page then shows what the head does: a random run of letters, written twice
        ss[state.INSPECT_TEXT] = INDUCTION_INSPECT_TEXT


def induction_box() -> None:
    box = st.container(border=True)
    a, b = box.columns([3, 1.3], vertical_alignment="center")
    a.markdown(f"**Watch an induction head form.** One click trains the `{INDUCTION_PRESET}` preset: "
               f"{PRESETS[INDUCTION_PRESET].description}. The *Circuits* panel of the live view shows every head's "
               f"induction score as it rises, and the loss curve marks the step where one forms.")
    b.button("Train an induction model", key="train_btn_induction", wrap=True, icon=":material/bolt:", on_click=_fill_induction,
             disabled=active, help="Fills the settings with the 'induction' preset and starts training.")
    problem = st.session_state.pop(state.TRAIN_INDUCTION_PROBLEM, None)
    if problem:
        box.error(f"Could not load the induction corpus: {problem}", icon=":material/error:")


def _fill_demo(preset_name: str) -> None:
    """"Watch a model over-fit": the preset with its corpus slice (Tiny Shakespeare's first
    characters) and tokenizer, started on this run under a folder named after the preset."""
    if _load_preset(preset_name, "Tiny Shakespeare", state.TRAIN_DEMO_PROBLEM):
        st.session_state[state.TRAIN_START_DEMO] = preset_name


def overfit_box() -> None:
    runs = lessons.demo_runs(runs_root())
    overfit_done = any(r["preset"] == lessons.OVERFIT_PRESET and r["status"] not in ACTIVE for r in runs)
    box = st.container(border=True)
    a, b = box.columns([3, 1.3], vertical_alignment="center")
    a.markdown(f"**Watch a model over-fit.** First, the `{lessons.OVERFIT_PRESET}` preset: "
               f"{PRESETS[lessons.OVERFIT_PRESET].description}. Then the same model with "
               f"`{lessons.CURED_PRESET}`: dropout 0.3 and early stopping. The chart below overlays both.")
    b.button("1 · Train a model that over-fits", key="train_btn_overfit", wrap=True, icon=":material/trending_up:",
             on_click=_fill_demo, args=(lessons.OVERFIT_PRESET,), disabled=active,
             help="Fills the settings with the 'overfit' preset and starts training (about 30–60 s).")
    b.button("2 · Train it with dropout + early stopping", key="train_btn_overfit_cured", wrap=True, icon=":material/healing:",
             on_click=_fill_demo, args=(lessons.CURED_PRESET,), disabled=active or not overfit_done,
             help="Enabled once the first run has ended: the same model and text, with the two remedies.")
    problem = st.session_state.pop(state.TRAIN_DEMO_PROBLEM, None)
    if problem:
        box.error(f"Could not load the over-fitting corpus: {problem}", icon=":material/error:")
    if not runs:
        return
    with box:
        ui.chart(lesson_figures.overfit_curves(runs), key="train_overfit_chart", name="overfitting-demo",
                 caption="Train (solid) and val (dashed) loss of the demonstration runs found in the runs folder. "
                         "Over-fitting is where the curves part: train keeps falling (the model memorises its "
                         "2,700 training characters) while val rises (it does worse on text it has not seen). "
                         "The star marks each run's best val loss (the weights kept in best.safetensors), the "
                         "cross where it stopped: with dropout and early stopping the run ends soon after val "
                         "stops improving. A run still training is drawn as far as it got; reload to extend it.")
        ui.csv_download(lessons.demo_table(runs), "overfitting-demo", key="train_overfit_csv", label="Demo runs CSV")


def _fill_layout(preset_name: str) -> None:
    """"Compare GPT-2 and Llama layouts": one of the pair with Tiny Shakespeare, started on this run."""
    if _load_preset(preset_name, "Tiny Shakespeare", state.TRAIN_LAYOUT_PROBLEM):
        st.session_state[state.TRAIN_START_DEMO] = preset_name


def layout_box() -> None:
    gpt2, llama = (lm_core.ModelConfig(**PRESETS[n].model) for n in LAYOUT_PRESETS)
    box = st.container(border=True)
    a, b = box.columns([3, 1.3], vertical_alignment="center")
    a.markdown(f"**Compare GPT-2 and Llama layouts.** The same size, recipe and text (Tiny Shakespeare) in two "
               f"layouts: `{LAYOUT_PRESETS[0]}` ({layout(gpt2).summary()}) and `{LAYOUT_PRESETS[1]}` "
               f"({layout(llama).summary()}). What differs most is position: GPT-2 learns a vector per position, "
               f"Llama rotates q and k by an angle. Train one, then the other; then pick one for each side of the "
               f"*Compare* page: their attention, their predictions and their position signals side by side.")
    for i, (name, label) in enumerate(zip(LAYOUT_PRESETS, ("GPT-2 layout", "Llama layout"))):
        b.button(f"{i + 1} · Train the {label}", key=f"train_btn_layout_{i}", wrap=True, icon=":material/compare_arrows:",
                 on_click=_fill_layout, args=(name,), disabled=active,
                 help=f"Fills the settings with the '{name}' preset and Tiny Shakespeare and starts training: "
                      f"2,000 steps, about a minute on 2 quiet CPU cores (24k and 21k tokens/s measured).")
    problem = st.session_state.pop(state.TRAIN_LAYOUT_PROBLEM, None)
    if problem:
        box.error(f"Could not load Tiny Shakespeare: {problem}", icon=":material/error:")
    runs = lessons.demo_runs(runs_root(), lessons.LAYOUT_LABELS)
    if runs:
        with box:
            ui.chart(lesson_figures.overfit_curves(runs, title="Train and val loss: GPT-2 and Llama layouts"),
                     key="train_layout_chart", name="layout-comparison",
                     caption="Train (solid) and val (dashed) loss of the layout runs found in the runs folder, on "
                             "the same text with the same recipe: what the layout changes, step for step. The star "
                             "marks each run's best val loss. A run still training is drawn as far as it got; "
                             "reload to extend it.")


def controls(mc, train_over, ft, box_note=None) -> None:
    st.subheader("4 · Run")
    status = job.status if job is not None else "idle"
    st.session_state[state.TRAIN_PAGE_STATUS] = status  # the live view reruns the page when it changes
    mine = job is None or job.may_control(ui.browser_id())
    c = st.container(horizontal=True, vertical_alignment="center")  # buttons as wide as their labels
    start = c.button("Start training", type="primary", icon=":material/play_arrow:", key="train_btn_start",
                     disabled=active or mc is None)
    pause = c.button("Pause", icon=":material/pause:", key="train_btn_pause", disabled=status != "running" or not mine)
    resume = c.button("Resume", icon=":material/resume:", key="train_btn_resume", disabled=status != "paused" or not mine)
    stop = c.button("Stop", icon=":material/stop:", key="train_btn_stop",
                    disabled=not active or status == "stopping" or not mine)
    if active:
        c.caption(f"Run **{job.run_id}** is {status}. " + ("Stop it to start another." if mine else
                                                         "It was started from another browser."))
    start_induction = st.session_state.pop(state.TRAIN_START_INDUCTION, False) and not active
    demo = st.session_state.pop(state.TRAIN_START_DEMO, None) if not active else None
    if (start or start_induction or demo) and mc is not None and _start(
            mc, train_over, name=demo, ft=None if demo or start_induction else ft,
            note=box_note if start_induction or demo else None):
        st.rerun()
    action, wanted = (("pause", ("paused",)) if pause else ("resume", ("running",)) if resume
                      else ("stop", ("stopping", "stopped", "finished")) if stop else (None, ()))
    if job is not None and action is not None:
        try:
            getattr(job, action)(ui.browser_id())  # a stop is acknowledged at once: "stopping"
        except NotYours as e:
            st.warning(str(e), icon=":material/lock:")
            return
        _wait_for_status(job, wanted)
        st.rerun()


def _wait_for_status(job: TrainingJob, wanted: tuple[str, ...], timeout: float = 3.0) -> None:
    """Wait (briefly) for the training process to take a request up, so the page redraws with it."""
    t0 = time.time()
    while time.time() - t0 < timeout and job.status not in wanted and job.active:
        time.sleep(0.05)


# -- 5. live view ---------------------------------------------------------------------------------


def _sharing() -> int:
    """How many tabs share the live view's refresh budget (this one included, at most MAX_SHARE)."""
    return min(MAX_SHARE, job.watched_by(ui.session_id(), WATCH_WINDOW_S))


def live_view() -> None:
    """Progress and the latest numbers. Reruns on its own every POLL_S seconds while a run is
    active (a fragment: nothing else on the page is redrawn)."""
    snap = job.poll()
    if snap.status != st.session_state.get(state.TRAIN_PAGE_STATUS):
        st.rerun()  # started, paused, stopping or ended: redraw the whole page (buttons, sidebar) once
    if snap.status in ACTIVE and _sharing() != st.session_state.get(state.TRAIN_WATCHERS):
        st.rerun()  # a tab opened or closed on this run: the page sets its refresh intervals again
    tc = job.train_config
    m = snap.metrics
    step = snap.step
    elapsed = m.get("elapsed_s") or 0.0
    frac = max(step / tc.max_steps, elapsed / tc.max_seconds if tc.max_seconds else 0.0)
    eta = m.get("eta_s")
    eta_txt = f" · ETA {estimates.format_seconds(eta)}" if snap.status == "running" and eta is not None and eta == eta else ""
    st.progress(min(1.0, frac), text=f"**{snap.status}** · step {step:,} / {tc.max_steps:,} · elapsed "
                                     f"{estimates.format_seconds(elapsed)}{eta_txt}")
    if snap.status in ("diverged", "failed", "interrupted"):
        st.error(f"{snap.error or 'The training process was killed.'} The run folder {job.run_dir} keeps the last good checkpoint; it is listed in "
                 f"the sidebar.", icon=":material/error:")
    elif snap.status in ("finished", "stopped"):
        st.success(f"Run **{job.run_id}** {snap.status} at step {step:,} ({snap.reason}). It is saved in "
                   f"{job.run_dir} and listed in the sidebar.", icon=":material/check_circle:")
    history_metrics(snap.history)


def live_charts() -> None:
    """The run's charts. While it trains they are redrawn every CHARTS_S seconds, not at every
    poll: drawing charts is what takes CPU from the run."""
    snap = job.poll()
    tc = job.train_config
    state.set_export_subject({"model": job.model_config.to_dict(), "train": tc.to_dict(), "corpus": job.corpus_name,
                              "tokenizer": getattr(job.tokenizer, "kind", None), "source": job.run_id,
                              "step": snap.step}, snap.history, job.run_id)
    only = None
    if snap.status in ACTIVE and snap.status != "paused":
        share = st.session_state.get(state.TRAIN_WATCHERS) or 1
        tabs = (f" {share} tabs watch this run and share one refresh budget, so each refreshes "
                f"{share}× less often." if share > 1 else "")
        st.caption(f"Charts as of step {snap.step:,}; they refresh every {CHARTS_S * share:.0f} s while the run "
                   f"trains (the numbers above, every {POLL_S * share:.0f} s). {LIVE_NOTE}{tabs}")
        only = st.segmented_control("Watch live", list(LIVE_CHARTS), key=state.TRAIN_LIVE_CHART,
                                    format_func=LIVE_CHARTS.get, required=True)
    baselines = job.baselines()
    history_charts(snap.history, snap.samples, job.run_id, head_scores=snap, run_dir=job.run_dir,
                   live=snap.status in ACTIVE, baselines=baselines,
                   baselines_note="" if baselines else NO_LIVE_BASELINES,
                   reason=None if snap.status in ACTIVE else snap.reason, only=only)


notice = st.session_state.pop(state.TRAIN_NOTICE, None)
if notice:
    st.success(notice, icon=":material/check_circle:")

if active:
    st.info(reg.busy_message(job, ui.browser_id()) + " The live view is below.", icon=":material/model_training:")
induction_box()
overfit_box()
layout_box()
# a box above was pressed: say "starting" right under it, before the settings below are drawn
box_note = st.empty()
if not active and (st.session_state.get(state.TRAIN_START_INDUCTION) or st.session_state.get(state.TRAIN_START_DEMO)):
    box_note.progress(0.0, text=f"**starting** · {PREPARING}")
    ui.show_now()  # on screen before the setup section below, which a one-click preset changes throughout
with st.expander("Set up a new run", expanded=not active):
    corpus_section()
    tokenizer_section()
    mc, train_over, ft = settings_section()
controls(mc, train_over, ft, box_note)
st.divider()
if job is not None:
    st.subheader("Live view" if active else f"Last run: {job.run_id}")
    share = 1
    if active:
        st.html(NO_TRANSITIONS)
        share = st.session_state[state.TRAIN_WATCHERS] = _sharing()
    st.fragment(run_every=POLL_S * share if active else None)(live_view)()
    st.fragment(run_every=CHARTS_S * share if active else None)(live_charts)()
else:
    lm = active_model()
    if lm.history is not None and len(lm.history):
        st.subheader(f"How the active model was trained: {lm.label}")
        st.caption("No run started from this page yet; below is the saved history of the model chosen in the "
                   "sidebar. Press **Start training** and the live view replaces it.")
        baselines, note = saved_baselines(lm)
        status = lm.run_config.status if lm.run_config is not None else {}
        history_view(lm.history, lm.samples, lm.label.split(" ")[0], key_prefix="saved",
                     head_scores=lm, run_dir=lm.path, baselines=baselines, baselines_note=note,
                     reason=status.get("reason"))
    else:
        st.info("No run yet. Press **Start training**; the charts appear here and update by themselves.",
                icon=":material/lightbulb:")
hub_checkpoints_section()  # a hub model's published checkpoints (Pythia): its circuits forming

