"""Named training recipes: a corpus, a tokenizer, and ModelConfig / TrainConfig overrides.

``python -m lm_core train --preset NAME`` starts from the preset; explicit flags override it
(:func:`lm_core.recipes.build_trainer` merges them, for the CLI and the app alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    """A recipe. ``model`` / ``train`` hold only the fields that differ from the defaults."""

    description: str
    corpus: str
    tokenizer: str = "char"          # char | bpe
    vocab_size: int | None = None    # BPE only
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "nanogpt-cpu": Preset(
        description="nanoGPT's CPU recipe on Tiny Shakespeare (characters): 4 layers × 4 heads × 128, "
                    "block 64, 2000 steps; nanoGPT reaches val loss 1.88",
        corpus="tiny-shakespeare",
        model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        train=dict(batch_size=12, learning_rate=1e-3, max_steps=2000, warmup_steps=100, min_lr=1e-4,
                   eval_interval=250, eval_iters=20),
    ),
    "llama-cpu": Preset(
        description="nanogpt-cpu's size and recipe in Llama's layout: RMSNorm, rotary positions, a SwiGLU MLP "
                    "(384 wide), grouped-query attention (4 query heads share 2 key/value heads), no biases, "
                    "an untied unembedding; 0.80 M parameters like nanogpt-cpu's 0.81 M",
        corpus="tiny-shakespeare",
        model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, norm="rmsnorm", pos="rotary",
                   mlp="swiglu", d_mlp=384, n_kv_head=2, bias=False, tie_embeddings=False),
        train=dict(batch_size=12, learning_rate=1e-3, max_steps=2000, warmup_steps=100, min_lr=1e-4,
                   eval_interval=250, eval_iters=20),
    ),
    "quick": Preset(
        description="the best val loss on Tiny Shakespeare in 60 s on 2 CPU cores: one layer × 4 heads × 128 "
                    "(a deeper model learns more per step but takes too few steps in a minute), batch 16, "
                    "a 4x learning rate and a cosine that ends when the time does",
        corpus="tiny-shakespeare",
        model=dict(n_layer=1, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        # 60 s runs on this 2-core machine (val loss; step counts vary ±20% with the host's speed):
        # 4 layers, batch 8, lr 4e-3: 1.84-1.88; 3 layers: 1.77-1.82; 2 layers: 1.70-1.75;
        # 1 layer: batch 8 1.67, 1.67; batch 16 1.65, 1.67 (chosen); batch 16 lr 6e-3 1.66;
        # batch 32 lr 6e-3 1.65; 1 layer 192 wide 1.68, 256 wide (batch 16) 1.77.
        train=dict(batch_size=16, learning_rate=4e-3, max_steps=1_000_000, warmup_steps=50, min_lr=1e-4,
                   eval_interval=1_000_000, eval_iters=30, max_seconds=60.0, schedule="time",
                   checkpoint_interval=500),
    ),
    "gpu": Preset(
        description="nanoGPT's Shakespeare recipe for a GPU: 6 layers × 6 heads × 384, block 256, "
                    "dropout 0.2, batch 64, 5000 steps (nanoGPT: val loss ≈ 1.47)",
        corpus="tiny-shakespeare",
        model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        train=dict(batch_size=64, learning_rate=1e-3, max_steps=5000, warmup_steps=100, min_lr=1e-4,
                   eval_interval=250, eval_iters=200, checkpoint_interval=500),
    ),
    "induction": Preset(
        description="2 layers × 4 heads × 64 on synthetic:induction: a previous-token head forms in "
                    "layer 0, then an induction head in layer 1 (induction score from ~0.05 to ≥ 0.4) "
                    "with a drop in the loss, in about a minute on 2 CPU cores",
        corpus="synthetic:induction",
        model=dict(n_layer=2, n_head=4, n_embd=64, block_size=32, dropout=0.0),
        train=dict(batch_size=32, learning_rate=3e-3, max_steps=4000, warmup_steps=50, min_lr=3e-4,
                   eval_interval=200, eval_iters=10, weight_decay=0.0, sample_tokens=64),
    ),
    "induction-rotary": Preset(
        description="the induction preset with rotary positions (RoPE) instead of a learned position table: "
                    "the previous-token head reads relative position straight from q·k",
        corpus="synthetic:induction",
        model=dict(n_layer=2, n_head=4, n_embd=64, block_size=32, dropout=0.0, pos="rotary"),
        train=dict(batch_size=32, learning_rate=3e-3, max_steps=4000, warmup_steps=50, min_lr=3e-4,
                   eval_interval=200, eval_iters=10, weight_decay=0.0, sample_tokens=64),
    ),
    "overfit": Preset(
        description="a model far too big for its text: 2 layers × 4 heads × 128 (0.4 M parameters) on the first "
                    "3,000 characters of Tiny Shakespeare. It memorises the training text: train loss falls "
                    "towards 0 while val loss turns up after ~50 steps (about 30 s on 2 CPU cores)",
        corpus="tiny-shakespeare?chars=3000",
        model=dict(n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        # 400 steps, one thread: val loss best 2.62 at step 50, then 2.9 (step 150), 4.6 (step 400)
        # while train loss goes 2.36 -> 0.24
        train=dict(batch_size=16, learning_rate=3e-3, max_steps=600, warmup_steps=20, min_lr=3e-4,
                   eval_interval=25, eval_iters=8, weight_decay=0.0, sample_tokens=48),
    ),
    "overfit-cured": Preset(
        description="the overfit preset with its two remedies: dropout 0.3 (each step trains a random "
                    "thinned network, so memorising is harder) and early stopping (the run ends after 4 "
                    "evaluations without a better val loss; the best step's weights are kept in best.safetensors)",
        corpus="tiny-shakespeare?chars=3000",
        model=dict(n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.3),
        train=dict(batch_size=16, learning_rate=3e-3, max_steps=600, warmup_steps=20, min_lr=3e-4,
                   eval_interval=25, eval_iters=8, weight_decay=0.0, sample_tokens=48,
                   early_stopping_patience=4),
    ),
    "default": Preset(
        description="the shipped default model (assets/default): characters of Python's own help "
                    "topics, 4 layers × 4 heads × 128, block 128; about 5 minutes on 2 CPU cores",
        corpus="builtin:python-docs",
        model=dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0),
        train=dict(batch_size=12, learning_rate=2e-3, max_steps=2000, warmup_steps=100, min_lr=1e-4,
                   eval_interval=250, eval_iters=20, checkpoint_interval=500,
                   # a small shipped folder (~3.5 MB): the weights, no snapshots, no optimizer state
                   snapshots=0, save_best=False, keep_resume_state=False),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def preset_configs(name: str, vocab_size: int, model_overrides: dict[str, Any] | None = None,
                   train_overrides: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """ModelConfig and TrainConfig of preset ``name`` with ``vocab_size`` and the overrides applied."""
    p = get_preset(name)
    model = ModelConfig(**{**p.model, **(model_overrides or {}), "vocab_size": vocab_size})
    train = TrainConfig(**{**p.train, **(train_overrides or {})})
    return model, train
