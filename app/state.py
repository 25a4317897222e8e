"""Session-state keys and typed accessors: the one place that names what a session remembers.

Only keys and accessors live here; the records a session keeps (``GenTrace``, ``Corpus``,
``FigureRecord``, …) are plain types of ``app.core``.

Widget keys are listed in :data:`WIDGET_DEFAULTS`. Streamlit forgets a widget's value when a
page without that widget runs; :func:`init` (called by ``main.py`` on every run, before any
page) sets the defaults once and re-assigns the current values, which keeps them across page
switches (the documented way to interrupt widget clean-up). Widgets with these keys are created
without ``value=``/``index=`` so that the state is the single source of truth.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from .core.bundle import ExportRecord, FigureRecord  # noqa: F401  (ExportRecord: what EXPORT holds)
from .core.corpus import Corpus
from .core.generation import GenTrace

# -- keys ------------------------------------------------------------------------------------

MODEL_CHOICE = "model_choice"          # sidebar: "default", "run:<path>", "live:<run id>" or "pretrained"
LIVE_PINS = "live_pins"                # {run id: step}: the snapshot a live model is inspected at
TIME_STEP = "time_step"                # sidebar time travel: the weight snapshot (step) every page shows
PRETRAINED_NAME = "pretrained_name"    # sidebar: hub name or local folder typed for "pretrained"
PRETRAINED_LOADED = "pretrained_loaded"  # the name that loaded successfully (what "pretrained" shows)
PRETRAINED_ERROR = "pretrained_error"  # why the last Load failed (shown until the next try)
PRETRAINED_PICK = "pretrained_pick"    # sidebar: a curated model (lm_core.catalog) or "other" (type a name)
PRETRAINED_NOTE = "pretrained_note"    # a message about the last download (cancelled), shown once
HUB_JOB = "_hub_job"                   # this session's hub download: {"key": job key, "then": what to do when done}
REV_STEPS = "rev_steps"                # Train: the hub checkpoints (revision names) whose head scores to draw
REV_JOB = "_rev_job"                   # this session's checkpoint sweep: {"key": job key}
SESSION_TOKEN = "_session_token"       # this session's id in shared job registries (who waits for a download)

FIGURES = "figures"                    # {chart key: FigureRecord} drawn by this run of the page (export)
EXPORT_TEXT = "export_text"            # (text, ids, pieces) the page inspects: its cache goes in the bundle
EXPORT_SUBJECT = "export_subject"      # {config, history, name}: what the page shows when not the sidebar's model
EXPORT = "export"                      # the last bundle built: ExportRecord

INSPECT_TEXT = "inspect_text"          # Attention / Embeddings: "Text to inspect"
ATTN_LAYER = "attn_layer"
ATTN_HEAD = "attn_head"
ATTN_METRIC = "attn_metric"
ATTN_QUERY = "attn_query"
ATTN_TAB = "attn_tab"                  # which tab under the large head: the layer grid or one query everywhere
ATTN_OVERVIEW = "attn_overview"        # the overview chart's selection event
ATTN_DRAWN = "attn_drawn"              # (model, token ids) the page last drew: a new text is drawn progressively
ATTN_SHOW_LARGE = "attn_show_large"    # this run drew a new text: the large head goes to the screen first

PROMPT = "gen_prompt"                  # Generate: "Prompt"
GEN_TEMPERATURE = "gen_temperature"
GEN_TOP_K = "gen_top_k"
GEN_TOP_P = "gen_top_p"
GEN_MAX_NEW = "gen_max_new"
GEN_SEED = "gen_seed"
GEN_TRACE = "gen_trace"                # GenTrace
GEN_SCRUB = "gen_scrub"                # which step the per-step charts show (1-based)
GEN_LAYER = "gen_layer"
GEN_HEAD = "gen_head"
GEN_BRANCH_PICK = "gen_branch_pick"
GEN_CANDIDATES = "gen_candidates"      # the candidates chart's selection event

EMB_TOKEN = "emb_token"
EMB_K = "emb_k"
EMB_WORD = "emb_word"                  # large vocabularies: the token typed instead of picked
EMB_MATCH = "emb_match"                # … and the one picked among the tokens that match it

LENS_TOPK = "lens_topk"                # Logit lens: candidates listed per cell on hover
LENS_POS = "lens_pos"                  # the position whose per-layer guesses are tabled
LENS_LOG = "lens_log"                  # colour the true-next chart by log probability

ABL_HEADS = "abl_heads"                # Ablation: ["L0 H1", …] heads switched off
ABL_MLPS = "abl_mlps"                  # [layer, …] MLPs switched off
ABL_MODE = "abl_mode"                  # "zero" | "mean"
ABL_POS = "abl_pos"                    # position whose next-token distribution is shown
ABL_GRID_NONCE = "abl_grid_nonce"      # bumps after each click so the grid's selection resets

CMP_A = "cmp_a"                        # Compare: source of side A (a model choice, as MODEL_CHOICE)
CMP_A_STEP = "cmp_a_step"
CMP_B = "cmp_b"
CMP_B_STEP = "cmp_b_step"
CMP_LAYER = "cmp_layer"
CMP_HEAD = "cmp_head"
CMP_POS = "cmp_pos"

# Token search: a typed token's probability and rank in a whole-vocabulary distribution (one box per page)
GEN_FIND = "gen_find"
LENS_FIND = "lens_find"
ABL_FIND = "abl_find"
CMP_FIND = "cmp_find"

# Sweeps over every head (Ablation: each head alone): progress kept per session, cancellable
SWEEP = "_sweep"                       # the running sweep of this session (app.core.sweeps.Sweep) or None
SWEEP_NOTICE = "_sweep_notice"         # what the last sweep ended with (cancelled, failed), shown once

CIRCUIT_KIND = "circuit_kind"          # Train: which head score the Circuits panel shows
REV_KIND = "rev_kind"                  # Train: which head score the hub checkpoints' Circuits panel shows

MECH_TEXT = "mech_text"
MECH_LAYER = "mech_layer"
MECH_HEAD = "mech_head"
MECH_QUERY = "mech_query"

TRAIN_SOURCE = "train_source"          # corpus source radio
TRAIN_SYNTH = "train_synth"
TRAIN_PASTE = "train_paste"
TRAIN_CORPUS = "train_corpus"          # Corpus (the loaded text and its name)
TRAIN_TOKENIZER = "train_tokenizer"
TRAIN_VOCAB = "train_vocab"
TRAIN_PRESET = "train_preset"
TRAIN_N_LAYER = "train_n_layer"
TRAIN_N_HEAD = "train_n_head"
TRAIN_N_EMBD = "train_n_embd"
TRAIN_BLOCK = "train_block_size"
TRAIN_BATCH = "train_batch_size"
TRAIN_LR = "train_lr"
TRAIN_STEPS = "train_steps"
TRAIN_DROPOUT = "train_dropout"
TRAIN_MAX_MINUTES = "train_max_minutes"
TRAIN_PATIENCE = "train_patience"      # early stopping: evaluations without a better val loss (0 = off)
TRAIN_LOG_Y = "train_log_y"
GEN_BIGRAM_OPEN = "gen_bigram_open"    # Generate: whether the bigram comparison is open (closed: not computed)
GEN_TAB = "gen_tab"                    # Generate: the open tab below (only it is drawn)
TRAIN_WATCHERS = "train_watchers"      # how many tabs shared the live view's refresh budget at the last full run
TRAIN_LIVE_CHART = "train_live_chart"  # the chart redrawn live beside the loss while a run trains
TRAIN_ESTIMATE = "train_estimate"      # (settings key, seconds per step)
TRAIN_NOTICE = "train_notice"          # a message to show once after a rerun
TRAIN_START_INDUCTION = "train_start_induction"  # set by "Train an induction model": start on this run
TRAIN_INDUCTION_PROBLEM = "train_induction_problem"  # why that button could not fill the settings
TRAIN_START_DEMO = "train_start_demo"  # set by the over-fitting demo's buttons: the preset to start on this run
TRAIN_DEMO_PROBLEM = "train_demo_problem"  # why a demo button could not fill the settings
TRAIN_PAGE_STATUS = "_train_page_status"  # the run's status when the Train page was last drawn in full
TRAIN_INIT = "train_init"              # "scratch" (a new model from a preset) | "pretrained" (fine-tune one)
TRAIN_FT_MODEL = "train_ft_model"      # fine-tuning: the pretrained model, a hub name or a folder
TRAIN_FT_REVISION = "train_ft_revision"  # ... its hub revision ("" = the default branch)
TRAIN_FT_FREEZE = "train_ft_freeze"    # ... what does not train: a key of app.core.finetune.FREEZE_CHOICES
TRAIN_FT_KEEP = "train_ft_keep"        # ... with "all-but-last": the blocks at the top that train
TRAIN_FT_SHAPE_OF = "_train_ft_shape_of"  # ... the model whose shape last set the context
TRAIN_LAYOUT_PROBLEM = "train_layout_problem"  # why the layout comparison's buttons could not fill the settings

# Internal keys (not widgets): a message or flag one part of a run leaves for another.
MODEL_PROBLEM = "_model_problem"       # why the chosen model (or its snapshot) could not load; the sidebar shows it
MODEL_FALLBACK = "_model_fallback"     # this run's pages show the default model because the choice failed: why
GEN_PROBLEM = "_gen_problem"           # Generate: why the last branch failed (shown after the rerun)
LIVE_REFRESH = "_live_refresh"         # sidebar button: use the live run's latest weights

DEFAULT_INSPECT_TEXT = "def add(a, b):\n    return a + b\ndef add(a, b):\n    return a + b\n"
DEFAULT_PROMPT = "def "

WIDGET_DEFAULTS: dict[str, Any] = {
    MODEL_CHOICE: "default",
    INSPECT_TEXT: DEFAULT_INSPECT_TEXT,
    ATTN_LAYER: 0,
    ATTN_HEAD: 0,
    ATTN_METRIC: "induction",
    ATTN_QUERY: None,
    PROMPT: DEFAULT_PROMPT,
    GEN_TEMPERATURE: 0.8,
    GEN_TOP_K: 0,
    GEN_TOP_P: 1.0,
    GEN_MAX_NEW: 40,
    GEN_SEED: 0,
    GEN_LAYER: 0,
    GEN_HEAD: 0,
    EMB_K: 10,
    MECH_TEXT: "def f(x):",
    MECH_LAYER: 0,
    MECH_HEAD: 0,
    TRAIN_SOURCE: "Built-in",
    TRAIN_PASTE: "",
    TRAIN_TOKENIZER: "char",
    TRAIN_VOCAB: 512,
    TRAIN_LOG_Y: False,
    TRAIN_LIVE_CHART: "circuits",
    TRAIN_MAX_MINUTES: 30,
    TRAIN_INIT: "scratch",
    TRAIN_FT_MODEL: "gpt2",
    TRAIN_FT_REVISION: "",
    TRAIN_FT_FREEZE: "all-but-last",
    TRAIN_FT_KEEP: 2,
    PRETRAINED_NAME: "gpt2",
    PRETRAINED_PICK: "gpt2",
    LENS_TOPK: 5,
    LENS_LOG: False,
    ABL_HEADS: [],
    ABL_MLPS: [],
    ABL_MODE: "zero",
    CMP_LAYER: 0,
    CMP_HEAD: 0,
    CIRCUIT_KIND: "induction",
    REV_KIND: "induction",
}


# Value widgets whose state outlives a page switch (never buttons, uploaders or charts).
PERSISTENT: tuple[str, ...] = tuple(WIDGET_DEFAULTS) + (
    TRAIN_SYNTH, TRAIN_PRESET, TRAIN_N_LAYER, TRAIN_N_HEAD, TRAIN_N_EMBD, TRAIN_BLOCK, TRAIN_BATCH,
    TRAIN_LR, TRAIN_STEPS, TRAIN_DROPOUT, TRAIN_PATIENCE, EMB_TOKEN, MECH_QUERY, GEN_SCRUB, GEN_BRANCH_PICK,
    TIME_STEP, EMB_WORD, REV_STEPS, LENS_POS, ABL_POS, CMP_A, CMP_A_STEP, CMP_B, CMP_B_STEP, CMP_POS,
)


def init() -> None:
    """Set defaults once per session and keep widget values across page switches."""
    ss = st.session_state
    for key, value in WIDGET_DEFAULTS.items():
        if key not in ss:
            ss[key] = list(value) if isinstance(value, list) else value  # never share a list between sessions
    for key in PERSISTENT:
        if key in ss:
            ss[key] = ss[key]


def get(key: str, default: Any = None) -> Any:
    return st.session_state.get(key, default)


def put(key: str, value: Any) -> None:
    st.session_state[key] = value


# -- the active model -------------------------------------------------------------------------


def model_choice() -> str:
    return st.session_state.get(MODEL_CHOICE, "default")


def set_model_choice(choice: str) -> None:
    st.session_state[MODEL_CHOICE] = choice


def session_token() -> str:
    """This session's id in the shared job registries (made once per session)."""
    token = st.session_state.get(SESSION_TOKEN)
    if token is None:
        import uuid

        token = st.session_state[SESSION_TOKEN] = uuid.uuid4().hex
    return token


def live_pin(run_id: str) -> int | None:
    return st.session_state.get(LIVE_PINS, {}).get(run_id)


def set_live_pin(run_id: str, step: int) -> None:
    pins = dict(st.session_state.get(LIVE_PINS, {}))
    pins[run_id] = int(step)
    st.session_state[LIVE_PINS] = pins


# -- corpus for training -------------------------------------------------------------------------


def corpus() -> Corpus | None:
    return st.session_state.get(TRAIN_CORPUS)


def set_corpus(c: Corpus | None) -> None:
    st.session_state[TRAIN_CORPUS] = c


# -- generation trace --------------------------------------------------------------------------


def gen_trace() -> GenTrace | None:
    return st.session_state.get(GEN_TRACE)


def set_gen_trace(trace: GenTrace | None) -> None:
    st.session_state[GEN_TRACE] = trace


# -- what the page drew (for the export bundle) ---------------------------------------------------


def clear_page_record() -> None:
    """Forget the figures and text of the previous run (``main.py``, at each full run)."""
    st.session_state[FIGURES] = {}
    st.session_state.pop(EXPORT_TEXT, None)
    st.session_state.pop(EXPORT_SUBJECT, None)


def register_figure(key: str, name: str, figure: Any, caption: str = "") -> None:
    """Remember a drawn figure under its chart key (a fragment rerun replaces it in place)."""
    st.session_state.setdefault(FIGURES, {})[key] = FigureRecord(name=name, figure=figure, caption=caption)


def figures() -> dict[str, FigureRecord]:
    return dict(st.session_state.get(FIGURES, {}))


def set_export_text(text: str, ids: list[int], pieces: list[str]) -> None:
    """The text this page inspects: the export bundle captures its activations."""
    st.session_state[EXPORT_TEXT] = (text, list(ids), list(pieces))


def export_text() -> tuple[str, list[int], list[str]] | None:
    return st.session_state.get(EXPORT_TEXT)


def set_export_subject(config: dict, history: Any, name: str) -> None:
    """The page shows another model than the sidebar's (the Train page's run): the bundle's
    config and history are this one's."""
    st.session_state[EXPORT_SUBJECT] = {"config": dict(config), "history": history, "name": name}


def export_subject() -> dict | None:
    return st.session_state.get(EXPORT_SUBJECT)
