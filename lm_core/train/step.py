"""The optimisation: AdamW, the learning-rate schedule, one training step, evaluation.

AdamW decays matrices and embeddings, not biases and LayerNorm gains (nanoGPT, following
GPT-2); the learning rate warms up linearly, then follows a cosine down to ``min_lr``;
gradients are clipped. Batches are a pure function of ``(seed, step)`` and dropout is reseeded
from ``(seed, step)`` before each step, so a resumed run repeats the uninterrupted one's
arithmetic: nothing random is carried between steps except the optimizer state.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

from ..config import TrainConfig, parse_freeze
from ..data import TRAIN_STREAM, VAL_STREAM, get_batch, stream_seed
from ..model import GPT
from .dist import Ranks

DROPOUT_STREAM = 3_000_000
LN2 = math.log(2.0)


class Diverged(ValueError):
    """The loss (or the gradient norm) became NaN or infinite."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable choice raises ``ValueError``."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if name == "mps" and not has_mps:
        raise ValueError("device 'mps' was asked for but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run uses: bf16 for ``precision="bf16"``, and for ``"auto"`` on a CUDA
    GPU that supports bf16 (as nanoGPT trains); ``None`` (plain fp32) otherwise. Weights and the
    optimizer stay fp32 either way."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and containers' cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def configure_threads(device: torch.device, num_threads: int | None, local_ranks: int = 1) -> int:
    """Set torch's CPU thread count for training and return it (no-op off the CPU): ``num_threads``
    if set, else every available core divided among the ranks on this machine (process-wide)."""
    if device.type != "cpu":
        return torch.get_num_threads()
    n = num_threads if num_threads is not None else max(1, available_cores() // max(1, local_ranks))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def layer_groups(model: GPT) -> dict[str, list[str]]:
    """Parameter names per logged group: embed, blocks.{l}.attn, blocks.{l}.mlp, ln_final."""
    groups: dict[str, list[str]] = {"embed": []}
    for l in range(model.config.n_layer):
        groups[f"blocks.{l}.attn"] = []
        groups[f"blocks.{l}.mlp"] = []
    groups["ln_final"] = []
    for name, _ in model.named_parameters():  # tied lm_head.weight is listed once, as wte
        parts = name.split(".")
        if parts[0] in ("wte", "wpe"):
            g = "embed"
        elif parts[0] == "blocks":
            g = f"blocks.{parts[1]}.{'attn' if parts[2] in ('ln_1', 'attn') else 'mlp'}"
        elif parts[0] == "ln_final":
            g = "ln_final"
        else:
            g = "other"
            groups.setdefault("other", [])
        groups[g].append(name)
    return groups


def apply_freeze(model: GPT, spec: str | None) -> list[str]:
    """Set ``requires_grad`` by ``TrainConfig.freeze`` (see :func:`lm_core.config.parse_freeze`)
    and return the names of the frozen parameters. ``None`` leaves the model as it is.

    Frozen parameters get no gradient and are not in the optimizer; their groups' gradient
    norms and update ratios in the history are 0.
    """
    what = parse_freeze(spec)
    if what is None:
        return [n for n, p in model.named_parameters() if not p.requires_grad]
    kind, k = what
    L = model.config.n_layer
    if kind == "all-but-last" and k > L:
        raise ValueError(f"freeze={spec!r} keeps {k} blocks training but the model has only {L}; "
                         f"use all-but-last:{L} or less")
    frozen = []
    for name, p in model.named_parameters():  # a tied lm_head.weight is wte.weight, listed once
        top = name.split(".")[0]
        if kind == "embeddings":
            train = top not in ("wte", "wpe")
        else:
            train = top in ("ln_final", "lm_head") or (top == "blocks" and int(name.split(".")[1]) >= L - k)
        p.requires_grad_(train)
        if not train:
            frozen.append(name)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"freeze={spec!r} leaves nothing to train in this model")
    return frozen


def is_oom(e: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(e, MemoryError) or isinstance(e, oom_types) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def optimizer_params(model: GPT) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The trained parameters, (decayed, not decayed): matrices and embeddings, then the rest.
    Their concatenation is the order of the optimizer's saved state."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]


def make_optimizer(model: GPT, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (its saved state follows
    :func:`optimizer_params`' order)."""
    decay, no_decay = optimizer_params(model)
    # fused AdamW (CPU and CUDA) is one kernel over all tensors: ~4x faster than the loop
    extra = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), **extra)


def lr_at(tc: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup, then cosine to ``min_lr``.

    With ``schedule="time"`` the cosine follows the larger of the step and wall-clock
    (``elapsed_s``) fractions of the budget, so a ``max_seconds`` run ends its decay in time.
    """
    if step < tc.warmup_steps:
        return tc.learning_rate * (step + 1) / (tc.warmup_steps + 1)
    progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
    if tc.schedule == "time" and tc.max_seconds:
        progress = max(progress, elapsed_s / tc.max_seconds)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return tc.min_lr + coeff * (tc.learning_rate - tc.min_lr)


class Stepper:
    """One model's optimisation: ``step()`` is one forward/backward/update, ``evaluate()`` the
    validation loss. Holds the counters a checkpoint saves (``step``, ``tokens_seen``,
    ``elapsed_s``) and the throughput window of the next history row."""

    def __init__(self, model: GPT, tc: TrainConfig, device: torch.device, ranks: Ranks,
                 train_ids: torch.Tensor, val_ids: torch.Tensor, weights_lock: threading.RLock) -> None:
        self.model, self.tc, self.device, self.ranks = model, tc, device, ranks
        self.train_ids, self.val_ids = train_ids, val_ids
        self.weights_lock = weights_lock  # held while the optimizer writes the weights
        self.amp_dtype = autocast_dtype(tc.precision, device)
        self.frozen = apply_freeze(model, tc.freeze)  # before DDP and the optimizer see the parameters
        self.net = ranks.wrap(model)
        decay, no_decay = optimizer_params(model)
        self.params = decay + no_decay  # the order of the optimizer's saved state
        # built at the first step or checkpoint: the first optimizer a process builds imports
        # torch._dynamo (~1 s), which a process that only writes a run folder (the app) never needs
        self._optimizer: torch.optim.AdamW | None = None
        named = dict(model.named_parameters())
        self.groups = {g: [named[n] for n in names] for g, names in layer_groups(model).items()}
        self.step = 0                 # optimizer updates done
        self.tokens_seen = 0
        self.elapsed_s = 0.0          # wall time while running (bookkeeping included, pauses not)
        self.schedule_elapsed = 0.0   # elapsed_s as the time schedule sees it (agreed by all ranks)
        self.last_finite_loss: float | None = None
        self.last_loss: float | None = None
        self.win_tokens, self.win_time = 0, 0.0          # since the last history row
        self.session_steps, self.session_time = 0, 0.0  # since this process started: for the ETA

    @property
    def optimizer(self) -> torch.optim.AdamW:
        if self._optimizer is None:
            self._optimizer = make_optimizer(self.model, self.tc, self.device)
        return self._optimizer

    def optimizer_state(self) -> dict[int, dict[str, Any]]:
        """The optimizer's per-parameter state, as a checkpoint saves it ({} before it is built: a
        fresh optimizer has none)."""
        return self._optimizer.state_dict()["state"] if self._optimizer is not None else {}

    def lr_at(self, step: int) -> float:
        return lr_at(self.tc, step, self.schedule_elapsed)

    def autocast(self):
        """bf16 autocast around a forward pass when the run's precision asks for it; else a no-op."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def one_step(self, measure: bool) -> dict[str, Any]:
        """One forward/backward/update. ``measure`` adds per-group gradient norms and update ratios."""
        tc, cfg, s = self.tc, self.model.config, self.step
        self.schedule_elapsed = self.elapsed_s
        if tc.schedule == "time":  # every rank must apply the same learning rate: the slowest clock
            self.schedule_elapsed = self.ranks.max(self.elapsed_s)
        lr = self.lr_at(s)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = get_batch(self.train_ids, tc.batch_size, cfg.block_size, tc.seed,
                         TRAIN_STREAM + self.ranks.rank, s)  # (B, T), (B, T)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if cfg.dropout > 0:
            torch.manual_seed(stream_seed(tc.seed, DROPOUT_STREAM + self.ranks.rank, s))
        self.net.train()
        t0 = time.perf_counter()
        with self.autocast():
            logits = self.net(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1))
        loss_val = float(loss.item())
        if self.ranks.any(not math.isfinite(loss_val)):
            raise Diverged(f"the loss became {loss_val} at step {s + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        out: dict[str, Any] = {"step": s + 1, "train_loss": loss_val, "lr": lr}
        if measure:  # before clipping: the gradients backpropagation produced
            out.update(self._grad_norms())
        total = None
        if tc.grad_clip > 0:
            total = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip)
        elif measure:
            total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        if total is not None:
            gn = float(total)
            if not math.isfinite(gn):
                raise Diverged(f"the gradient norm became {gn} at step {s + 1}")
            out["grad_norm"] = gn
        before = {g: [p.detach().clone() for p in ps] for g, ps in self.groups.items()} if measure else None
        with self.weights_lock:  # a snapshot never sees half-updated weights
            self.optimizer.step()
            self.step = s + 1
        dt = time.perf_counter() - t0
        if before is not None:
            out.update(self._update_ratios(before))
        n_tok = tc.batch_size * cfg.block_size * self.ranks.world_size
        self.tokens_seen += n_tok
        self.win_tokens += n_tok
        self.win_time += dt
        self.last_finite_loss = self.last_loss = loss_val
        return out

    def _grad_norms(self) -> dict[str, float]:
        out = {}
        for g, ps in self.groups.items():
            norms = [p.grad.detach().norm() for p in ps if p.grad is not None]
            out[f"grad_norm/{g}"] = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        return out

    @torch.no_grad()
    def _update_ratios(self, before: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        out = {}
        for g, ps in self.groups.items():
            if not ps:
                continue
            dw = torch.stack([(p - b).norm() for p, b in zip(ps, before[g])])
            wn = float(torch.linalg.vector_norm(torch.stack([b.norm() for b in before[g]])))
            out[f"update_ratio/{g}"] = float(torch.linalg.vector_norm(dw)) / wn if wn > 0 else math.nan
        return out

    @torch.no_grad()
    def evaluate(self, val_tokens_per_char: float, deadline: float | None = None) -> dict[str, float]:
        """Validation loss: the mean over ``eval_iters`` fixed batches of the held-out split
        (``deadline``, a ``time.perf_counter()`` value: stop early, after at least one batch)."""
        tc, cfg = self.tc, self.model.config
        was_training = self.model.training
        self.model.eval()
        try:
            losses = []
            for i in range(tc.eval_iters):
                x, y = get_batch(self.val_ids, tc.batch_size, cfg.block_size, tc.seed, VAL_STREAM, i)
                with self.autocast():
                    logits = self.model(x.to(self.device))  # (B, T, V)
                losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.to(self.device).view(-1)))
                if deadline is not None and time.perf_counter() > deadline:
                    break
            val = float(torch.stack(losses).mean())
        finally:
            self.model.train(was_training)
        return {"val_loss": val, "val_bpc": val / LN2 * val_tokens_per_char}

    def take_throughput(self) -> float:
        """Training tokens per second since the last call (steps only, no evaluation)."""
        tps = self.win_tokens / self.win_time if self.win_time > 0 else math.nan
        self.win_tokens, self.win_time = 0, 0.0
        return tps

    def eta_s(self) -> float:
        """Seconds left at this session's pace, within ``max_seconds`` when one is set."""
        tc = self.tc
        per_step = self.session_time / self.session_steps if self.session_steps else math.nan
        eta = (tc.max_steps - self.step) * per_step
        if tc.max_seconds is not None:
            eta = min(eta, max(0.0, tc.max_seconds - self.elapsed_s))
        return eta
