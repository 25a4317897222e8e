"""Every ``st.cache_resource`` / ``st.cache_data`` of the app, and nothing else.

Models are resources (shared, never copied); derived arrays are data keyed by the model's
``key`` (which changes whenever its weights do) plus the input and settings, so an unrelated
widget change never recomputes them. Arguments starting with ``_`` are not hashed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

import lm_core
from lm_core import corpora
from lm_core import hub as lm_hub
from lm_core import surprise as lm_surprise
from lm_core.catalog import ModelFacts
from lm_core.ngram import NGramModels
from lm_core.surprise import SurpriseComparison
from lm_core.timing import measure_matmul_flops

from .core import circuits, estimates, lessons, picker, predictions, sweeps
from .core import inspection as core_inspection  # the cached `inspection` below would shadow the name
from .core.models import (LoadedModel, at_snapshot, default_model_dir, fallback_model, folder_stamp, from_run, runs_root,
                     load_folder, load_pretrained_model, load_run, snapshot_steps)
from .core.hubjobs import HubJobs
from .core.jobs import TrainingRegistry


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
def run_folder(path: str, stamp: float, n_snapshots: int):
    """A loaded ``lm_core.runs.Run`` (``stamp`` = the weights' mtime and ``n_snapshots`` the number
    of snapshot files, so a new checkpoint or snapshot of a live run reloads it)."""
    return load_run(path)


@st.cache_resource(max_entries=4)
def run_model(path: str, stamp: float) -> LoadedModel:
    """A run folder's last checkpoint (``stamp`` = the weights' mtime, so a rewrite reloads),
    sharing the weights of :func:`run_folder`'s Run."""
    return from_run(run_folder(path, stamp, len(snapshot_steps(Path(path)))), "run")


@st.cache_resource(max_entries=8, show_spinner="Loading the weights of that step…")
def snapshot_model(path: str, step: int, stamp: float, _n_snapshots: int, _base: LoadedModel) -> LoadedModel:
    """``_base`` (a run's latest weights) at the snapshot of ``step`` (time travel; ``stamp`` is the
    snapshot file's mtime)."""
    run = run_folder(path, folder_stamp(path), _n_snapshots)
    return at_snapshot(_base, run.load_snapshot(int(step)), int(step), stamp)


@st.cache_resource(max_entries=3, show_spinner="Loading the pretrained model…")
def pretrained_model(name: str, revision: str | None = None) -> LoadedModel:
    """A pretrained model from the hub cache or a local folder (``lm_core.load_pretrained``),
    at ``revision`` (a hub branch such as ``"step1000"``). Errors are not cached."""
    return load_pretrained_model(name, revision)


@st.cache_resource
def hub_jobs() -> HubJobs:
    """The server's hub downloads and checkpoint sweeps, shared by every session (each session
    joins a job under its own id; see ``core/hubjobs.py``), with the head scores of each checkpoint
    (kept under the cache folder, ``LM_LENS_CACHE``). Downloads come over plain HTTP, where
    Cancel stops them between two chunks (``lm_core.hub.stoppable_downloads``)."""
    lm_hub.stoppable_downloads()
    return HubJobs(scores_dir=corpora.default_cache_dir() / "hub_head_scores")


@st.cache_resource
def flops_per_s() -> float:
    """This machine's float32 matmul speed, measured once: what cost estimates divide by."""
    return measure_matmul_flops()


@st.cache_data(max_entries=64, ttl=600, show_spinner="Reading the model's config.json…")
def model_facts(name: str, endpoint: str) -> tuple[ModelFacts | None, str | None]:
    """(facts, None) or (None, why not) for a picker name (``endpoint``: the hub asked, part of the key)."""
    try:
        return picker.model_facts(name), None
    except ValueError as e:
        return None, str(e)


@st.cache_data(max_entries=8, ttl=15, show_spinner=False)
def hub_unavailable(endpoint: str) -> str | None:
    """Why the hub cannot be asked now (None when it can), re-checked every 15 s."""
    return lm_hub.hub_unavailable()


@st.cache_data(max_entries=32, ttl=600, show_spinner="Listing the model's training checkpoints…")
def step_revisions(name: str, endpoint: str) -> tuple[tuple[str, int], ...]:
    """The ``step<N>`` branches of a hub repo as (revision, step), in step order; none when it has
    none or they cannot be listed (offline and nothing cached)."""
    try:
        return tuple((r.name, r.step) for r in lm_core.list_step_revisions(name))
    except ValueError:
        return ()


@st.cache_resource
def registry() -> TrainingRegistry:
    """The process-wide training registry: one per server, shared by every tab and session. It
    finds runs still training under the runs folder (the server restarted while they ran)."""
    return TrainingRegistry(runs_root())


@st.cache_resource(max_entries=2)
def live_model(run_id: str, step: int, _registry: TrainingRegistry) -> LoadedModel | None:
    """The live run's weights at its latest snapshot (``step`` pins the cache entry)."""
    return _registry.live_model(run_id)


# -- derived data -------------------------------------------------------------------------------


@st.cache_data(max_entries=48, show_spinner=False)
def inspection(model_key: str, ids: tuple[int, ...], _model: lm_core.GPT) -> dict[str, np.ndarray]:
    return core_inspection.inspect(_model, list(ids))


@st.cache_data(max_entries=8, show_spinner=False)
def embedding_projection(model_key: str, _model: lm_core.GPT, reference_key: str | None = None,
                         _reference: lm_core.GPT | None = None) -> dict[str, np.ndarray]:
    """PCA of the token embeddings; with a reference model (the run's final weights), rotated
    onto the reference's own projection (Procrustes) so that points do not jump between steps."""
    ref = None
    if _reference is not None and reference_key is not None and reference_key != model_key:
        ref = embedding_projection(reference_key, _reference)
    return core_inspection.embedding_projection(_model, ref)


@st.cache_data(max_entries=16, show_spinner=False)
def logit_lens(model_key: str, ids: tuple[int, ...], top_k: int, _model: lm_core.GPT) -> dict[str, np.ndarray]:
    return core_inspection.logit_lens(_model, list(ids), top_k)


@st.cache_data(max_entries=32, show_spinner=False)
def ablation(model_key: str, ids: tuple[int, ...], heads: tuple[tuple[int, int], ...], mlps: tuple[int, ...],
             mode: str, _model: lm_core.GPT) -> dict[str, np.ndarray]:
    return predictions.ablation(_model, list(ids), list(heads), list(mlps), mode)


@st.cache_data(max_entries=8, show_spinner=False)
def compare_predictions(key_a: str, key_b: str, ids: tuple[int, ...], _model_a: lm_core.GPT,
                        _model_b: lm_core.GPT) -> dict[str, np.ndarray]:
    return predictions.compare_predictions(_model_a, _model_b, list(ids))


@st.cache_data(max_entries=8, show_spinner="Ablating every head in turn…")
def ablation_effects(model_key: str, ids: tuple[int, ...], mode: str, _model: lm_core.GPT) -> np.ndarray:
    return predictions.ablation_effects(_model, list(ids), mode)


@st.cache_resource
def sweep_results() -> sweeps.SweepResults:
    """Finished sweeps over every head, shared by every session (keyed by model key, text and
    mode: a second look at the same text is instant). Locked; bounded."""
    return sweeps.SweepResults()


# -- a whole vocabulary: token search -----------------------------------------------------------


@st.cache_resource(max_entries=4, show_spinner=False)
def vocab_pieces(model_key: str, _tokenizer) -> tuple[str, ...]:
    """Every token's display piece, id order (immutable: shared by every session, never copied)."""
    return tuple(_tokenizer.pieces(range(_tokenizer.vocab_size)))


@st.cache_data(max_entries=16, show_spinner=False)
def next_token_probs(model_key: str, ids: tuple[int, ...], _model: lm_core.GPT) -> np.ndarray:
    return predictions.next_token_probs(_model, list(ids))


@st.cache_data(max_entries=8, show_spinner=False)
def ablation_distributions(model_key: str, ids: tuple[int, ...], heads: tuple[tuple[int, int], ...],
                           mlps: tuple[int, ...], mode: str, pos: int, _model: lm_core.GPT) -> dict[str, np.ndarray]:
    return predictions.ablation_distributions(_model, list(ids), list(heads), list(mlps), mode, int(pos))


@st.cache_data(max_entries=8, show_spinner=False)
def logit_lens_at(model_key: str, ids: tuple[int, ...], position: int, _model: lm_core.GPT) -> np.ndarray:
    return core_inspection.logit_lens_at(_model, list(ids), int(position))


@st.cache_data(max_entries=8, show_spinner="Reading a validation slice of the training corpus…")
def val_windows(spec: str, tokenizer_key: str, block_size: int, _tokenizer) -> tuple[tuple[int, ...], ...]:
    """A fixed small slice of the corpus' validation part (its last 10%), as token windows."""
    return predictions.val_windows(_tokenizer, corpora.load_corpus(spec), block_size)


@st.cache_data(max_entries=32, show_spinner="Computing the val loss…")
def val_loss(model_key: str, windows: tuple[tuple[int, ...], ...], heads: tuple[tuple[int, int], ...],
             mlps: tuple[int, ...], mode: str, _model: lm_core.GPT) -> tuple[float, float]:
    return predictions.val_loss(_model, windows, list(heads), list(mlps), mode)


@st.cache_data(max_entries=256, show_spinner=False)
def snapshot_probe_scores(path: str, step: int, stamp: float, _n_snapshots: int) -> dict[str, np.ndarray]:
    """Probe head scores of one weight snapshot (used when the run recorded none while training)."""
    run = run_folder(path, folder_stamp(path), _n_snapshots)
    return circuits.probe_scores(run.load_snapshot(int(step)), run.tokenizer)


@st.cache_data(max_entries=64, show_spinner=False)
def neighbours(model_key: str, token_id: int, k: int, _model: lm_core.GPT):
    return core_inspection.neighbours(_model, token_id, k)


@st.cache_data(max_entries=8, show_spinner=False)
def position_similarity(model_key: str, _model: lm_core.GPT) -> np.ndarray | None:
    return core_inspection.position_similarity(_model)


@st.cache_data(max_entries=8, show_spinner=False)
def rotary_profile(model_key: str, _model: lm_core.GPT) -> dict[str, np.ndarray] | None:
    return core_inspection.rotary_profile(_model)


@st.cache_data(max_entries=16, show_spinner=False)
def walkthrough(model_key: str, ids: tuple[int, ...], layer: int, head: int, _model: lm_core.GPT) -> dict:
    return core_inspection.walkthrough(_model, list(ids), layer, head)


@st.cache_data(max_entries=32, show_spinner=False)
def step_time(config: dict, batch_size: int, freeze: str | None = None, steps: int = 3) -> float:
    """Measured seconds per training step for a model shape on this machine (``freeze``: what a
    fine-tuning run keeps frozen)."""
    return estimates.measure_step_time(lm_core.ModelConfig(**config), batch_size, steps=steps, freeze=freeze)


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


# -- the article's lessons: n-gram baselines and surprise ---------------------------------------


@st.cache_resource(max_entries=4, show_spinner="Counting the corpus' bigrams…")
def corpus_ngrams(family: str, spec: str | None, _tokenizer) -> NGramModels:
    """Unigram and bigram models of a model's corpus (its train split, in its tokenizer's ids),
    one per model ``family`` (a run keeps its tokenizer at every step). Shared, immutable.
    Raises ``lessons.NoCorpus`` (not cached) when the corpus is unknown or cannot be loaded."""
    return lessons.corpus_ngrams(spec, _tokenizer, max_n=2)


@st.cache_data(max_entries=8, show_spinner="Computing the n-gram baselines of the corpus…")
def corpus_baselines(family: str, spec: str | None, _tokenizer) -> list[dict]:
    """The n-gram baselines of a run saved without ``baselines.json`` (the shipped default model,
    older runs): raises ``lessons.NoCorpus`` when its corpus is unknown, missing or too large."""
    return lessons.corpus_baselines(spec, _tokenizer)


@st.cache_data(max_entries=16, show_spinner="Scoring every token…")
def surprise(model_key: str, family: str, spec: str | None, ids: tuple[int, ...], n_chars: int,
             _model: lm_core.GPT, _tokenizer, _ngrams: NGramModels) -> SurpriseComparison:
    """The transformer's and the bigram's loss on each token of ``ids`` (``lm_core.surprise``)."""
    m = lm_surprise.model_surprise(_model, list(ids), tokenizer=_tokenizer, n_chars=n_chars)
    b = lm_surprise.ngram_surprise(_ngrams, list(ids), 2, tokenizer=_tokenizer, n_chars=n_chars)
    return SurpriseComparison(m, b, (b.losses - m.losses).astype(np.float32))


@st.cache_data(max_entries=16, show_spinner="Scoring every token…")
def model_surprise(model_key: str, ids: tuple[int, ...], n_chars: int, _model: lm_core.GPT, _tokenizer):
    """The transformer's loss on each token of ``ids`` alone (no baseline to compare with)."""
    return lm_surprise.model_surprise(_model, list(ids), tokenizer=_tokenizer, n_chars=n_chars)
