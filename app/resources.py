"""Every ``st.cache_resource`` / ``st.cache_data`` of the app, and nothing else.

Models are resources (shared, never copied); derived arrays are data keyed by the model's
``key`` (which changes whenever its weights do) plus the input and settings, so an unrelated
widget change never recomputes them. Arguments starting with ``_`` are not hashed.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

import lm_core
from lm_core import corpora

from . import compute
from .models import LoadedModel, default_model_dir, fallback_model, folder_stamp, load_folder
from .training import TrainingRegistry


# -- models -------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the default model…")
def _default_model(path: str, stamp: float) -> LoadedModel:
    return load_folder(default_model_dir(), "default", label="default (shipped)")


def default_model() -> tuple[LoadedModel, str | None]:
    """The shipped default model, or an untrained stand-in and the reason it could not load."""
    path = default_model_dir()
    try:
        return _default_model(str(path), folder_stamp(path)), None
    except ValueError as e:
        return _fallback(), str(e)


@st.cache_resource
def _fallback() -> LoadedModel:
    return fallback_model()


@st.cache_resource(max_entries=4, show_spinner="Loading the run…")
def run_model(path: str, stamp: float) -> LoadedModel:
    """A run folder's last checkpoint (``stamp`` = the weights' mtime, so a rewrite reloads)."""
    return load_folder(path, "run")


@st.cache_resource
def registry() -> TrainingRegistry:
    """The process-wide training registry: one per server, shared by every tab and session."""
    return TrainingRegistry()


@st.cache_resource(max_entries=2)
def live_model(run_id: str, step: int, _registry: TrainingRegistry) -> LoadedModel | None:
    """The live run's weights at its latest snapshot (``step`` pins the cache entry)."""
    return _registry.live_model(run_id)


# -- derived data -------------------------------------------------------------------------------


@st.cache_data(max_entries=48, show_spinner=False)
def inspection(model_key: str, ids: tuple[int, ...], _model: lm_core.GPT) -> dict[str, np.ndarray]:
    return compute.inspect(_model, list(ids))


@st.cache_data(max_entries=8, show_spinner=False)
def embedding_projection(model_key: str, _model: lm_core.GPT) -> dict[str, np.ndarray]:
    return compute.embedding_projection(_model)


@st.cache_data(max_entries=64, show_spinner=False)
def neighbours(model_key: str, token_id: int, k: int, _model: lm_core.GPT):
    return compute.neighbours(_model, token_id, k)


@st.cache_data(max_entries=8, show_spinner=False)
def position_similarity(model_key: str, _model: lm_core.GPT) -> np.ndarray:
    return compute.position_similarity(_model)


@st.cache_data(max_entries=16, show_spinner=False)
def walkthrough(model_key: str, ids: tuple[int, ...], layer: int, head: int, _model: lm_core.GPT) -> dict:
    return compute.walkthrough(_model, list(ids), layer, head)


@st.cache_data(max_entries=32, show_spinner=False)
def step_time(config: dict, batch_size: int) -> float:
    """Measured seconds per training step for a model shape on this machine."""
    return compute.measure_step_time(lm_core.ModelConfig(**config), batch_size)


@st.cache_data(max_entries=8, show_spinner="Loading the corpus…")
def corpus_text(spec: str) -> str:
    """A built-in or synthetic corpus (offline, deterministic)."""
    return corpora.load_corpus(spec)


@st.cache_data(max_entries=16, show_spinner=False)
def corpus_stats(text: str) -> dict[str, int]:
    return corpora.corpus_stats(text)


@st.cache_data(max_entries=16, show_spinner="Training the tokenizer…")
def tokens_per_char(text: str, kind: str, vocab_size: int) -> tuple[float, int]:
    """Tokens per character and vocabulary size of a tokenizer trained on (a sample of) ``text``."""
    from lm_core.tokenizers import BPETokenizer, CharTokenizer

    sample = text[:200_000]
    tok = CharTokenizer.train(sample) if kind == "char" else BPETokenizer.train(sample, vocab_size=vocab_size)
    return tok.tokens_per_char(sample), tok.vocab_size
