"""Fine-tuning from the Train page, as plain data: the models suggested, the freezing choices, and
settings a CPU can carry for a model of GPT-2 small's size (124 M parameters).

The run itself is built by :func:`lm_core.recipes.build_trainer` (``init_from``, ``revision``,
``freeze``), which keeps the three in the run's ``config.json``: the training process, started
with ``--resume`` on that folder, and every later resume read them from there.
"""

from __future__ import annotations

from pathlib import Path

import lm_core

SUGGESTED = ("gpt2", "EleutherAI/pythia-70m", "HuggingFaceTB/SmolLM2-135M")
FREEZE_CHOICES = {
    "all-but-last": "All but the last N blocks",
    "embeddings": "The embeddings only",
    "nothing": "Nothing: every weight trains",
}
# What a CPU carries for a 124 M model: 4 × 128 = 512 tokens a step. Measured for GPT-2 small's
# shape on 2 busy cores: 14 s a step with all but the last 2 blocks frozen (the default), 15 s with
# the embeddings frozen, 29 s with nothing frozen; so 100 steps fit the 30-minute budget frozen.
# Fine-tuning takes a small learning rate (nanoGPT's finetune_shakespeare: 3e-5 for 20 iterations
# of 32k tokens; 1e-4 for a hundred small steps) and no dropout.
CPU_SETTINGS = dict(block_size=128, batch_size=4, learning_rate=1e-4, max_steps=100, dropout=0.0)
TRAIN_SETTINGS = dict(warmup_steps=20, min_lr=1e-5, weight_decay=0.0, eval_iters=5, sample_tokens=64)
SNAPSHOT_BYTES = 2e9        # weight snapshots (time travel) of one run keep to about this much disk
MAX_SNAPSHOTS = 20


def freeze_spec(choice: str, keep: int, n_layer: int) -> str | None:
    """``TrainConfig.freeze`` for a freezing choice: None, ``"embeddings"`` or ``"all-but-last:K"``
    (``keep`` blocks of the model's ``n_layer`` train; more than it has is refused here, not at Start)."""
    if choice not in FREEZE_CHOICES:
        raise ValueError(f"freezing choice must be one of {', '.join(FREEZE_CHOICES)}, got {choice!r}")
    if choice == "nothing":
        return None
    if choice == "embeddings":
        return "embeddings"
    if not 1 <= int(keep) <= n_layer:
        raise ValueError(f"this model has {n_layer} blocks, so between 1 and {n_layer} of them can keep training, "
                         f"not {int(keep)}")
    return f"all-but-last:{int(keep)}"


def model_settings(cfg: lm_core.ModelConfig, block_size: int, dropout: float) -> lm_core.ModelConfig:
    """The pretrained ``cfg`` as the run will train it: its context cut to ``block_size`` (a learned
    position table longer than the model's is refused here, as the recipe refuses it)."""
    if cfg.pos == "learned" and block_size > cfg.block_size:
        raise ValueError(f"context {block_size} is longer than this model's {cfg.block_size} learned positions; "
                         f"choose {cfg.block_size} or less")
    return cfg.replace(block_size=int(block_size), dropout=float(dropout))


def snapshots_for(n_params: int) -> int:
    """Weight snapshots to keep for time travel: at most :data:`MAX_SNAPSHOTS`, and no more than
    :data:`SNAPSHOT_BYTES` of float32 weights (4 for GPT-2 small's 500 MB), but at least 2."""
    return max(2, min(MAX_SNAPSHOTS, int(SNAPSHOT_BYTES // max(1, 4 * n_params))))


def run_name(init_from: str, corpus_name: str) -> str:
    """The start of a fine-tuning run's folder name: the model's last name part, then the corpus."""
    model = Path(init_from.rstrip("/\\")).name or "pretrained"
    return f"{model}-{corpus_name}"
