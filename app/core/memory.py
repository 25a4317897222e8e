"""Will it fit? Estimates of the memory a model needs to load and to inspect a text, against what
the machine has free, checked *before* loading or capturing, so that a model too large for the
machine is a message saying how much is needed and how much is available, never a killed server.
No Streamlit here.
"""

from __future__ import annotations

import os

import lm_core

from .text import InputProblem

BYTES_PER_PARAM = 4          # lm_core keeps weights in float32
LOAD_COPIES = 2              # while loading: the file's tensors and the model's, side by side
HEADROOM = 0.9               # use at most this share of the available memory


class MemoryProblem(InputProblem):
    """The machine has too little free memory for what was asked; the message says how much."""


def available_bytes() -> int | None:
    """Memory the system can give without swapping: ``MemAvailable`` of ``/proc/meminfo`` (Linux),
    else free physical pages (``sysconf``); None when neither is known (then nothing is refused)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def load_bytes(cfg: lm_core.ModelConfig) -> int:
    """Memory to load a model of ``cfg``: its float32 weights, twice while the file is read."""
    return int(cfg.n_params) * BYTES_PER_PARAM * LOAD_COPIES


def capture_bytes(cfg: lm_core.ModelConfig, n_tokens: int) -> int:
    """Memory one inspection of ``n_tokens`` tokens needs beyond the weights (float32): the scores
    and patterns of every head (kept, plus the numpy copy the pages get), the residual stream at
    every layer, one layer's MLP activations and the logits with their softmax."""
    T, L, H, D, V = int(n_tokens), cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size
    patterns = 3 * L * H * T * T
    resid = 4 * (L + 1) * T * D
    mlp = 3 * T * cfg.mlp_dim
    logits = 3 * T * V
    return 4 * (patterns + resid + mlp + logits)


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n < 10 * 2**30 else f"{n / 2**30:.0f} GB"


def check(need: int, what: str, fix: str, available: int | None = None) -> None:
    """Raise :class:`MemoryProblem` when ``need`` bytes are more than the usable share of the
    available memory (``available``, default :func:`available_bytes`)."""
    free = available_bytes() if available is None else available
    if free is None or need <= free * HEADROOM:
        return
    raise MemoryProblem(f"{what} needs about {_gb(need)} of memory, and this machine has {_gb(free)} available. "
                        f"{fix}")


def check_load(cfg: lm_core.ModelConfig, name: str = "This model") -> None:
    """Refuse, before loading, a model whose weights would not fit."""
    check(load_bytes(cfg), f"{name} ({cfg.n_params / 1e6:,.0f} M parameters)",
          "Pick a smaller model, or close other programs (or other LM Lens tabs' models) and try again.")


def check_capture(cfg: lm_core.ModelConfig, n_tokens: int) -> None:
    """Refuse, before the forward, an inspection whose activations would not fit."""
    check(capture_bytes(cfg, n_tokens),
          f"Inspecting {n_tokens} tokens with this model ({cfg.n_layer} layers × {cfg.n_head} heads)",
          "Shorten the text, pick a smaller model, or close other programs and try again.")
