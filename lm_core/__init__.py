"""LM Lens core: a hookable GPT, tokenizers, corpora, generation, training and analysis."""

from .config import ModelConfig, TrainConfig
from .hooks import ActivationCache, HookPoint
from .model import GPT, KVCache
from .tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer
from .corpora import corpus_from_bytes, corpus_from_text, corpus_stats, list_synthetic_tasks, load_corpus, SYNTHETIC_TASKS
from . import analysis
from .analysis import LogitLens
from .pretrained import load_pretrained
from . import checkpoints
from .checkpoints import head_scores_over_revisions, list_step_revisions, load_revision
from .train import Trainer, TrainSnapshot, resolve_device
from .runs import Run, RunInfo, list_runs, load_run
from .presets import PRESETS, Preset
from .generate import GenerationStep, generate, generate_text, sampling_distribution

__all__ = ["ModelConfig", "TrainConfig", "ActivationCache", "HookPoint", "GPT", "KVCache",
           "GenerationStep", "generate", "generate_text", "sampling_distribution",
           "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer",
           "corpus_from_bytes", "corpus_from_text", "corpus_stats", "list_synthetic_tasks", "load_corpus",
           "SYNTHETIC_TASKS", "analysis", "LogitLens", "load_pretrained",
           "checkpoints", "list_step_revisions", "load_revision", "head_scores_over_revisions",
           "Trainer", "TrainSnapshot", "resolve_device", "Run", "RunInfo", "load_run", "list_runs",
           "PRESETS", "Preset"]
__version__ = "0.1.0"
