"""Helpers the tests share (the fixtures that use them are in ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

import lm_core
from lm_core.corpora import load_corpus
from lm_core.tokenizers import CharTokenizer
from lm_core.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = dict(vocab_size=23, block_size=12, n_layer=3, n_head=4, n_embd=32, dropout=0.0)


def make_tiny_run(path: Path, steps: int = 30) -> Path:
    """A real (tiny) run folder, trained by lm_core in a few seconds."""
    text = load_corpus("builtin:python-docs")[:60_000]
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    cfg = lm_core.ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    tc = lm_core.TrainConfig(batch_size=4, max_steps=steps, eval_interval=10, eval_iters=2, log_interval=5,
                             warmup_steps=2, checkpoint_interval=10, sample_tokens=20)
    Trainer(lm_core.GPT(cfg), tok, text, tc, run_dir=path, corpus="builtin:python-docs").run()
    return path


def make_tiny_model(seed: int = 0, **overrides) -> lm_core.GPT:
    """A small GPT in eval mode whose LayerNorm gains and biases are away from their init, so
    invariants are not met by accident."""
    torch.manual_seed(seed)
    model = lm_core.GPT(lm_core.ModelConfig(**{**TINY_CONFIG, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def app_env(monkeypatch, tmp_path: Path, default_model_dir: Path) -> Path:
    """The app's environment for a test: the shipped default model, a fresh runs folder (returned)
    and a fresh cache under ``tmp_path``."""
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("LM_LENS_DEFAULT_MODEL", str(default_model_dir))
    monkeypatch.setenv("LM_LENS_RUNS_DIR", str(runs))
    monkeypatch.setenv("LM_LENS_CACHE", str(tmp_path / "cache"))
    return runs


def end_app_training() -> None:
    """Stop every run the app's registry trains and forget ended ones, so the next test's Train
    page starts with no "last run"."""
    from app import resources

    resources.registry().stop_all()
    resources.registry().forget_ended()


def scramble(hf) -> None:
    """Move every parameter of a transformers model (norm gains, biases) far from its init, so a
    conversion that drops or misplaces one shows."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
