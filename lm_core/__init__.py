"""LM Lens core: a hookable GPT, tokenizers, corpora, generation, training and analysis."""

from .config import ModelConfig, TrainConfig
from .hooks import ActivationCache, HookPoint
from .model import GPT, KVCache
from .generate import GenerationStep, generate, generate_text, sampling_distribution

__all__ = ["ModelConfig", "TrainConfig", "ActivationCache", "HookPoint", "GPT", "KVCache",
           "GenerationStep", "generate", "generate_text", "sampling_distribution"]
__version__ = "0.1.0"
