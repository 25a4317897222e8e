"""Training: loss → backpropagation → weight update, made visible and resumable.

:class:`Trainer` runs AdamW (decay on matrices and embeddings, none on biases and LayerNorm
gains) with a linear warmup then a cosine decay to ``min_lr``, gradient clipping and seeded
batches. It reports through callbacks and :meth:`Trainer.snapshot` and knows nothing of any UI.

What is logged at every logged step (one row of :attr:`Trainer.history`):

* ``train_loss`` (cross-entropy of that step's batch, nats/token), ``val_loss`` at evaluations
  (mean over ``eval_iters`` fixed batches of the held-out last 10%), ``train_bpc``/``val_bpc``
  (bits per character = loss / ln 2 × tokens per character: char and BPE runs compare);
* ``lr``, ``tokens_per_s`` (training steps only), ``elapsed_s`` (wall time while running,
  evaluation and checkpoints included, pauses excluded), ``eta_s``, ``tokens_seen``;
* backpropagation: ``grad_norm`` (total, before clipping) and ``grad_norm/<group>``;
* the weight update: ``update_ratio/<group>`` = ‖Δw‖ / ‖w‖ of that step.

Groups: ``embed`` (``wte`` + ``wpe``; ``wte`` is tied to the unembedding, so its gradient
includes the output layer's), ``blocks.{l}.attn`` (``ln_1`` + attention), ``blocks.{l}.mlp``
(``ln_2`` + MLP) and ``ln_final``.

Exact resume: batches are a pure function of ``(seed, step)`` (:mod:`lm_core.data`) and the
dropout RNG is reseeded from ``(seed, step)`` before each step, so a run resumed from a
checkpoint repeats the uninterrupted run's arithmetic. Nothing random is carried between steps
except the optimizer state, which the checkpoint holds.

Threads: the CPU thread count is set deliberately (:meth:`Trainer.configure_threads`): every
core the process may use, divided among DDP ranks on one machine; ``TrainConfig.num_threads``
overrides it. Background runs (the app) use a thread, not a subprocess, and the same count:
torch releases the GIL inside its kernels, so measured with ``bench/bench_train.py --only
thread`` on 2 cores, a background thread keeps 0.99x the foreground's (the CLI's) tokens/s
while the main thread plays the app's live view once a second, whose 15 ms job then takes
20 ms (median). A thread also shares the weights with the UI without copying them through a
pipe. Dropout reseeds torch's global RNG each step, which a UI thread drawing from the same
global RNG would notice (lm_core's own generation uses its own generators).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import SAMPLE_STREAM, TRAIN_STREAM, VAL_STREAM, get_batch, split_text, stream_seed
from .model import GPT
from . import runs as R

log = logging.getLogger(__name__)

STATUSES = ("idle", "running", "paused", "stopped", "finished", "diverged", "failed")
DROPOUT_STREAM = 3_000_000
_LN2 = math.log(2.0)

BASE_COLUMNS = ["step", "train_loss", "val_loss", "train_bpc", "val_bpc", "lr", "grad_norm",
                "tokens_per_s", "elapsed_s", "eta_s", "tokens_seen"]

Callback = Callable[[dict[str, Any]], Any]


class Diverged(ValueError):
    """The loss (or the gradient norm) became NaN or infinite."""


class CallbackError(RuntimeError):
    """A user callback raised; the run fails with this message."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable choice raises ``ValueError``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
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
            sub = "attn" if parts[2] in ("ln_1", "attn") else "mlp"
            g = f"blocks.{parts[1]}.{sub}"
        elif parts[0] == "ln_final":
            g = "ln_final"
        else:
            g = "other"
            groups.setdefault("other", [])
        groups[g].append(name)
    return groups


def is_oom(e: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(e, MemoryError) or isinstance(e, oom_types) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


@dataclass
class TrainSnapshot:
    """A consistent copy of a trainer's state, safe to use while training goes on."""

    status: str
    step: int
    history: pd.DataFrame
    metrics: dict[str, Any]           # the latest history row (empty before the first)
    samples: list[dict[str, Any]]     # [{"step": int, "text": str}, …]
    state_dict: dict[str, torch.Tensor] | None  # CPU copy of the weights (state_dict_for_save)
    error: str | None = None
    reason: str | None = None
    head_scores: pd.DataFrame | None = None  # step, kind, layer, head, value (see Trainer.head_scores)


def _as_list(cb: Callback | Iterable[Callback] | None) -> list[Callback]:
    if cb is None:
        return []
    if callable(cb):
        return [cb]
    return list(cb)


class Trainer:
    """Train ``model`` on ``text`` (val = the last 10%) with ``config``; optionally into ``run_dir``.

    Use it step by step (``step()``, ``evaluate()``), in the foreground (``run()``, as the CLI
    does) or in the background (``start()``, ``pause()``, ``resume()``, ``stop()``) while a UI
    polls ``snapshot()``. Callbacks run in the training thread with one dict argument:
    ``on_step(row)`` at each logged step, ``on_eval(row)`` after each evaluation (the row has
    ``sample`` too), ``on_end(summary)`` once when the run ends (``status``, ``reason``,
    ``step``, ``error``). A callback that raises fails the run (status ``failed``).

    With ``run_dir`` the run is saved as it goes (see :mod:`lm_core.runs`). A folder that
    already holds a run is refused unless ``resume=True``, which continues it exactly from its
    last checkpoint (see :meth:`from_run`).
    """

    def __init__(self, model: GPT, tokenizer, text: str, config: TrainConfig,
                 run_dir: str | os.PathLike[str] | None = None, *, corpus: str | None = None,
                 resume: bool = False, on_step: Callback | Iterable[Callback] | None = None,
                 on_eval: Callback | Iterable[Callback] | None = None,
                 on_end: Callback | Iterable[Callback] | None = None) -> None:
        if not isinstance(model, GPT):
            raise ValueError(f"Trainer needs an lm_core.GPT model, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise ValueError(f"Trainer needs a TrainConfig, got {type(config).__name__}")
        vs = getattr(tokenizer, "vocab_size", None)
        if vs != model.config.vocab_size:
            raise ValueError(f"the tokenizer has {vs} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}; build the model with vocab_size=tokenizer.vocab_size")
        self.config = config
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.model = model
        self.device = resolve_device(config.device)
        self.amp_dtype = autocast_dtype(config.precision, self.device)
        if self.device.type == "cuda":
            # TF32 tensor cores for the fp32 matrix products that autocast leaves (nanoGPT does the same)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.on_step, self.on_eval, self.on_end = _as_list(on_step), _as_list(on_eval), _as_list(on_end)

        # distributed (set up by the CLI under torchrun): each rank its own data stream
        dist = torch.distributed
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        model.to(self.device)
        self._net: torch.nn.Module = model
        if self.distributed and self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._net = DDP(model, device_ids=ids)

        self.train_split, self.val_split = split_text(text, tokenizer, model.config.block_size)
        self.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self._sample_prompt_text = "\n" if "\n" in text else text[0]

        # AdamW: weight decay on matrices and embeddings only (nanoGPT, following GPT-2)
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self._params = decay + no_decay  # the optimizer's flat order, used for its saved state
        # fused AdamW (CPU and CUDA) is one kernel over all tensors: ~4x faster than the loop
        extra = {"fused": True} if self.device.type in ("cpu", "cuda") else {"foreach": True}
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=config.learning_rate, betas=(config.beta1, config.beta2), **extra)

        named = dict(model.named_parameters())
        self._groups = {g: [named[n] for n in names] for g, names in layer_groups(model).items()}
        self.columns = BASE_COLUMNS + [f"grad_norm/{g}" for g in self._groups] + \
            [f"update_ratio/{g}" for g in self._groups]

        # progress
        self.step_count = 0
        self.tokens_seen = 0
        self.elapsed_s = 0.0
        self._schedule_elapsed = 0.0  # elapsed_s as the time schedule sees it (agreed by all ranks)
        self.best_val_loss = math.inf
        self.best_step: int | None = None
        self._evals_since_best = 0
        self.last_finite_loss: float | None = None
        self._last_loss: float | None = None
        self._win_tokens = 0
        self._win_time = 0.0
        self._session_steps = 0
        self._session_time = 0.0
        self.num_threads: int | None = None

        # shared with other threads; everything below is guarded by _lock
        self._lock = threading.RLock()
        self._rows: list[dict[str, Any]] = []
        self._lines: list[str] = []  # the rows as CSV lines
        self._step_lock = threading.Lock()  # one step at a time, whoever drives it
        self.samples: list[dict[str, Any]] = []
        self._head_records: list[dict[str, Any]] = []  # [{"step", "scores": {kind: [[L x H]]}}]
        self._status = "idle"
        self._error: str | None = None
        self._reason: str | None = None
        self._thread: threading.Thread | None = None
        self._stop_flag = threading.Event()
        self._run_flag = threading.Event()  # cleared while paused
        self._run_flag.set()
        self._paused_ack = threading.Event()
        self._ended = False

        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._snapshot_plan = set(R.snapshot_steps(config.max_steps, config.snapshots))
        self._created = R.now_iso()
        if self.run_dir is not None:
            if resume:
                self._load_checkpoint()
            else:
                self._init_run_dir()
        elif resume:
            raise ValueError("resume=True needs the run_dir to resume from")

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], text: str | None = None, *,
                 overrides: dict[str, Any] | None = None, **kwargs) -> Trainer:
        """Continue the run in ``run_dir`` exactly from its last checkpoint.

        The model, tokenizer and TrainConfig come from the folder; the text is re-read from the
        corpus spec in config.json unless given. ``overrides`` may change ``max_steps``,
        ``max_seconds``, ``device``, ``num_threads``, ``log_interval``, ``checkpoint_interval``
        or ``keep_resume_state`` (a different ``max_steps`` changes the learning-rate schedule,
        so the continuation is then no longer the uninterrupted run).
        """
        from .tokenizers import load_tokenizer

        cfg = R.load_run_config(run_dir)
        allowed = {"max_steps", "max_seconds", "device", "num_threads", "log_interval", "checkpoint_interval",
                   "keep_resume_state"}
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise ValueError(f"cannot change {bad} when resuming; only {sorted(allowed)} may change")
        tc = cfg.train.replace(**overrides)
        tok_path = Path(run_dir) / R.TOKENIZER_FILE
        try:
            tok = load_tokenizer(tok_path)
        except ValueError as e:
            raise ValueError(str(e) if str(tok_path) in str(e) else f"{tok_path}: {e}") from None
        if text is None:
            if not cfg.corpus:
                raise ValueError(f"{Path(run_dir) / R.CONFIG_FILE} names no corpus; pass the training text")
            from .corpora import load_corpus

            text = load_corpus(cfg.corpus)
        return cls(GPT(cfg.model), tok, text, tc, run_dir, corpus=cfg.corpus, resume=True, **kwargs)

    def _init_run_dir(self) -> None:
        d = self.run_dir
        if (d / R.CONFIG_FILE).exists():
            raise ValueError(f"{d} already holds a run; resume it (--resume / resume=True), "
                             f"choose another folder, or pass --overwrite to replace it")
        if self.distributed:  # every rank has checked before rank 0 writes anything
            torch.distributed.barrier()
        if not self.is_main:
            return
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(d / R.TOKENIZER_FILE)  # atomic, normal file mode
        self._write_history()
        R.atomic_write_json(d / R.SAMPLES_FILE, [])
        if 0 in self._snapshot_plan:
            self._save_snapshot(0)
        self._save_checkpoint(state="idle")

    def _run_config(self, state: str, **status: Any) -> R.RunConfig:
        st = {"state": state, "step": self.step_count, "checkpoint_step": self._ckpt_step,
              "last_finite_loss": self.last_finite_loss, "best_val_loss": _finite_or_none(self.best_val_loss),
              "best_step": self.best_step, "world_size": self.world_size, "updated": R.now_iso(), **status}
        if state in ("idle", "running", "paused"):  # lets a reader tell a live run from a killed one
            st.update(pid=os.getpid(), host=socket.gethostname())
        if self._error:
            st["message"] = self._error
        if self._reason:
            st["reason"] = self._reason
        return R.RunConfig(model=self.model.config, train=self.config, tokenizer_kind=self.tokenizer.kind,
                           corpus=self.corpus, corpus_sha256=self.text_sha256, created=self._created, status=st)

    # ------------------------------------------------------------------ properties

    @property
    def status(self) -> str:
        """idle, running, paused, stopped, finished, diverged or failed."""
        with self._lock:
            return self._status

    @property
    def error(self) -> str | None:
        """What went wrong, in a sentence, when the status is diverged or failed."""
        with self._lock:
            return self._error

    @property
    def reason(self) -> str | None:
        """Why the run ended: max_steps, max_seconds, early_stopping, stopped, diverged, failed."""
        with self._lock:
            return self._reason

    @property
    def history(self) -> pd.DataFrame:
        """One row per logged step (a copy): the columns of :attr:`columns`."""
        with self._lock:
            rows = list(self._rows)
        return self._frame(rows)

    @property
    def latest(self) -> dict[str, Any]:
        """The latest history row (empty before the first)."""
        with self._lock:
            return dict(self._rows[-1]) if self._rows else {}

    def _frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        df = pd.DataFrame(rows, columns=self.columns)
        df["step"] = df["step"].astype("int64")
        for c in self.columns[1:]:
            df[c] = df[c].astype("float64")
        return df

    def snapshot(self, weights: bool = True) -> TrainSnapshot:
        """History, latest metrics, samples and (with ``weights``) a CPU copy of the weights.

        Thread-safe: the weights are copied between optimizer steps, never half updated, and
        the lock is held only for the copies (the DataFrame is built after).
        """
        with self._lock:
            rows = list(self._rows)
            sd = ({k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict_for_save().items()}
                  if weights else None)
            head = list(self._head_records)
            snap = dict(status=self._status, step=self.step_count, samples=list(self.samples),
                        error=self._error, reason=self._reason)
        return TrainSnapshot(history=self._frame(rows), metrics=dict(rows[-1]) if rows else {},
                             state_dict=sd, head_scores=R.head_scores_frame(head), **snap)

    # ------------------------------------------------------------------ threads

    def configure_threads(self) -> int:
        """Set torch's CPU thread count for training and return it (no-op off the CPU).

        ``TrainConfig.num_threads`` if set, else every available core divided among the DDP
        ranks on this machine. torch's setting is process-wide.
        """
        if self.device.type != "cpu":
            return torch.get_num_threads()
        n = self.config.num_threads
        if n is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)) if self.distributed else 1
            n = max(1, available_cores() // max(1, local))
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self.num_threads = n
        return n

    # ------------------------------------------------------------------ the math of one step

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warmup, then cosine to ``min_lr``.

        With ``schedule="time"`` the cosine follows the larger of the step and wall-clock
        fractions of the budget, so a ``max_seconds`` run ends its decay when time runs out.
        """
        tc = self.config
        if step < tc.warmup_steps:
            return tc.learning_rate * (step + 1) / (tc.warmup_steps + 1)
        progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
        if tc.schedule == "time" and tc.max_seconds:
            progress = max(progress, self._schedule_elapsed / tc.max_seconds)
        progress = min(1.0, progress)
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
        return tc.min_lr + coeff * (tc.learning_rate - tc.min_lr)

    def _is_row_step(self, s: int) -> bool:
        tc = self.config
        return s % tc.log_interval == 0 or s % tc.eval_interval == 0 or s == tc.max_steps

    def _all_ranks_any(self, flag: bool) -> bool:
        if not (self.distributed and self.world_size > 1):
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _mean_over_ranks(self, value: float) -> float:
        if not (self.distributed and self.world_size > 1):
            return value
        t = torch.tensor([value], device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def _autocast(self):
        """bf16 autocast around a forward pass when the run's precision asks for it; else a no-op."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _optimizer_step(self, measure: bool) -> dict[str, Any]:
        """One forward/backward/update. ``measure`` adds per-group gradient norms and update ratios."""
        tc, cfg = self.config, self.model.config
        s = self.step_count
        self._schedule_elapsed = self.elapsed_s
        if tc.schedule == "time" and self.distributed and self.world_size > 1:
            # every rank must apply the same learning rate: follow the slowest clock
            t = torch.tensor([self.elapsed_s], device=self.device, dtype=torch.float64)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            self._schedule_elapsed = float(t.item())
        lr = self.lr_at(s)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = get_batch(self.train_split.ids, tc.batch_size, cfg.block_size, tc.seed,
                         TRAIN_STREAM + self.rank, s)  # (B, T), (B, T)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if cfg.dropout > 0:
            torch.manual_seed(stream_seed(tc.seed, DROPOUT_STREAM + self.rank, s))
        self._net.train()
        t0 = time.perf_counter()
        with self._autocast():
            logits = self._net(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1))
        loss_val = float(loss.item())
        if self._all_ranks_any(not math.isfinite(loss_val)):
            raise Diverged(f"the loss became {loss_val} at step {s + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        out: dict[str, Any] = {"step": s + 1, "train_loss": loss_val, "lr": lr}
        if measure:  # before clipping: the gradients backpropagation produced
            for g, ps in self._groups.items():
                norms = [p.grad.detach().norm() for p in ps if p.grad is not None]
                out[f"grad_norm/{g}"] = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        total = None
        if tc.grad_clip > 0:
            total = torch.nn.utils.clip_grad_norm_(self._params, tc.grad_clip)
        elif measure:
            total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self._params if p.grad is not None]))
        if total is not None:
            gn = float(total)
            if not math.isfinite(gn):
                raise Diverged(f"the gradient norm became {gn} at step {s + 1}")
            out["grad_norm"] = gn
        before = None
        if measure:
            before = {g: [p.detach().clone() for p in ps] for g, ps in self._groups.items()}
        with self._lock:  # snapshot() never sees half-updated weights
            self.optimizer.step()
            self.step_count = s + 1
        dt = time.perf_counter() - t0
        if before is not None:
            with torch.no_grad():
                for g, ps in self._groups.items():
                    if not ps:
                        continue
                    dw = torch.stack([(p - b).norm() for p, b in zip(ps, before[g])])
                    w = torch.stack([b.norm() for b in before[g]])
                    wn = float(torch.linalg.vector_norm(w))
                    out[f"update_ratio/{g}"] = float(torch.linalg.vector_norm(dw)) / wn if wn > 0 else math.nan
        n_tok = tc.batch_size * cfg.block_size * self.world_size
        self.tokens_seen += n_tok
        self._win_tokens += n_tok
        self._win_time += dt
        self.last_finite_loss = loss_val
        self._last_loss = loss_val
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss: mean over ``eval_iters`` fixed batches of the held-out split.

        The batches are the same at every evaluation (their own seeded stream), so the curve
        shows the model changing, not the batches. Returns ``val_loss`` (nats/token) and
        ``val_bpc`` (bits per character). No weights change; no history row is written.
        """
        tc, cfg = self.config, self.model.config
        was_training = self.model.training
        self.model.eval()
        try:
            losses = []
            for i in range(tc.eval_iters):
                x, y = get_batch(self.val_split.ids, tc.batch_size, cfg.block_size, tc.seed, VAL_STREAM, i)
                with self._autocast():
                    logits = self.model(x.to(self.device))  # (B, T, V)
                losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.to(self.device).view(-1)))
            val = float(torch.stack(losses).mean())
        finally:
            self.model.train(was_training)
        return {"val_loss": val, "val_bpc": val / _LN2 * self.val_split.tokens_per_char}

    def generate_sample(self) -> str:
        """A continuation of a newline (``sample_tokens`` long, temperature 0.8, the same seed
        every time), so successive samples show the model's writing improve, not the dice."""
        from .generate import generate_text

        if self.config.sample_tokens <= 0:
            return ""
        return generate_text(self.model, self.tokenizer, self._sample_prompt_text,
                             max_new_tokens=self.config.sample_tokens, temperature=0.8,
                             seed=stream_seed(self.config.seed, SAMPLE_STREAM, 0))

    # ------------------------------------------------------------------ bookkeeping

    def _make_row(self, out: dict[str, Any], val: dict[str, float] | None) -> dict[str, Any]:
        tc = self.config
        row: dict[str, Any] = {c: math.nan for c in self.columns}
        row.update(out)
        row["train_loss"] = self._mean_over_ranks(out["train_loss"])
        row["train_bpc"] = row["train_loss"] / _LN2 * self.train_split.tokens_per_char
        if val is not None:
            row.update(val)
        row["tokens_per_s"] = self._win_tokens / self._win_time if self._win_time > 0 else math.nan
        self._win_tokens, self._win_time = 0, 0.0
        row["elapsed_s"] = self.elapsed_s
        row["tokens_seen"] = self.tokens_seen
        per_step = self._session_time / self._session_steps if self._session_steps else math.nan
        eta = (tc.max_steps - self.step_count) * per_step
        if tc.max_seconds is not None:
            eta = min(eta, max(0.0, tc.max_seconds - self.elapsed_s))
        row["eta_s"] = eta
        return row

    def _add_row(self, row: dict[str, Any]) -> None:
        line = R.history_line(self.columns, row)  # formatted once: rewriting the file stays O(rows)
        with self._lock:
            if self._rows and self._rows[-1]["step"] == row["step"]:
                self._rows[-1], self._lines[-1] = row, line
            else:
                self._rows.append(row)
                self._lines.append(line)
        if self.run_dir is not None and self.is_main:
            self._write_history()

    def _write_history(self, fsync: bool = False) -> None:
        """history.csv, replaced atomically (a reader never sees a torn row); fsync at checkpoints."""
        with self._lock:
            text = R.history_header(self.columns) + "".join(self._lines)
        R.atomic_write_bytes(self.run_dir / R.HISTORY_FILE, text.encode("utf-8"), fsync=fsync)

    def _do_eval(self, scheduled: bool) -> tuple[dict[str, float], bool]:
        """Evaluate; keep the best checkpoint; count patience. Returns (val metrics, early stop?).

        Only scheduled evaluations count towards early stopping, so an extra evaluation at a
        stop does not change what a resumed run would decide.
        """
        val = self.evaluate()
        early = False
        if val["val_loss"] < self.best_val_loss:
            self.best_val_loss, self.best_step = val["val_loss"], self.step_count
            if scheduled:
                self._evals_since_best = 0
            if self.run_dir is not None and self.is_main and self.config.save_best:
                R.save_safetensors(self.run_dir / R.BEST_FILE, self.model.state_dict_for_save(),
                                   {"step": str(self.step_count), "val_loss": repr(val["val_loss"])})
        elif scheduled:
            self._evals_since_best += 1
            p = self.config.early_stopping_patience
            early = p is not None and self._evals_since_best >= p
        return val, early

    def _record_sample(self) -> str | None:
        if not self.is_main or self.config.sample_tokens <= 0:
            return None
        s = self.step_count
        text = self.generate_sample()
        with self._lock:
            if self.samples and self.samples[-1]["step"] == s:
                self.samples[-1] = {"step": s, "text": text}
            else:
                self.samples.append({"step": s, "text": text})
            samples = list(self.samples)
        if self.run_dir is not None:
            R.atomic_write_json(self.run_dir / R.SAMPLES_FILE, samples, fsync=False)
        return text

    @property
    def head_scores(self) -> pd.DataFrame:
        """Probe head scores at each evaluation: columns step, kind, layer, head, value.

        Kinds: previous_token, duplicate_token, induction (in [0, 1]) and entropy (nats), from
        :func:`lm_core.analysis.probe_head_scores` on a fixed repeated-random-token probe (ids
        from :func:`lm_core.analysis.probe_token_ids` of the run's tokenizer), so
        the scores of different steps compare: this is how circuits are watched forming.
        """
        with self._lock:
            return R.head_scores_frame(list(self._head_records))

    def _record_head_scores(self) -> None:
        if not self.is_main or self.model.config.block_size < 4:
            return
        from .analysis import probe_head_scores, probe_token_ids  # analysis imports the model only: no cycle

        scores = probe_head_scores(self.model, token_ids=probe_token_ids(self.tokenizer))
        self.model.train()
        rec = {"step": self.step_count, "scores": {k: v.tolist() for k, v in scores.items()}}
        with self._lock:
            if self._head_records and self._head_records[-1]["step"] == rec["step"]:
                self._head_records[-1] = rec
            else:
                self._head_records.append(rec)
            records = list(self._head_records)
        if self.run_dir is not None:
            R.atomic_write_json(self.run_dir / R.HEAD_SCORES_FILE, records, fsync=False)

    def _emit(self, row: dict[str, Any], evaluated: bool, sample: str | None) -> None:
        self._add_row(row)
        if not self.is_main:
            return
        for name, cbs, arg in (("on_step", self.on_step, row), ("on_eval", self.on_eval if evaluated else [],
                                                                 {**row, "sample": sample})):
            for cb in cbs:
                try:
                    cb(dict(arg))
                except Exception as e:
                    raise CallbackError(f"the {name} callback raised {type(e).__name__}: {e}") from e

    def _bookkeeping(self, out: dict[str, Any]) -> bool:
        """Row, evaluation, sample, snapshot, checkpoint due at this step. Returns early-stop."""
        tc, s = self.config, self.step_count
        early = False
        if self._is_row_step(s):
            evaluated = s % tc.eval_interval == 0 or s == tc.max_steps
            val, sample = None, None
            if evaluated:
                val, early = self._do_eval(scheduled=True)
                sample = self._record_sample()
                self._record_head_scores()
            self._emit(self._make_row(out, val), evaluated, sample)
        if self.run_dir is not None and self.is_main:
            if s in self._snapshot_plan:
                self._save_snapshot(s)
            if s % tc.checkpoint_interval == 0:
                self._save_checkpoint(state="running")
        return early

    def _final_row(self) -> None:
        """Make sure the last step has a row with a validation loss (runs cut short by time or
        by stop() end between logged steps) and a snapshot."""
        s = self.step_count
        if s == 0 or self._last_loss is None:
            return
        with self._lock:
            last = dict(self._rows[-1]) if self._rows else None
        if last is not None and last["step"] == s:
            if not _isnan(last["val_loss"]):
                return
            val, _ = self._do_eval(scheduled=False)
            row = {**last, **val}
        else:
            val, _ = self._do_eval(scheduled=False)
            row = self._make_row({"step": s, "train_loss": self._last_loss, "lr": self.lr_at(s - 1)}, val)
        sample = self._record_sample()
        self._record_head_scores()
        self._emit(row, True, sample)
        if self.run_dir is not None and self.is_main and self.config.snapshots and s not in self._snapshot_plan:
            self._save_snapshot(s)

    # ------------------------------------------------------------------ checkpoints

    @property
    def _ckpt_step(self) -> int:
        return getattr(self, "_last_ckpt_step", 0)

    def _save_snapshot(self, step: int) -> None:
        R.save_safetensors(R.snapshot_path(self.run_dir, step), self.model.state_dict_for_save(),
                           {"step": str(step)})

    def _save_checkpoint(self, state: str, **status: Any) -> None:
        """Write resume state, weights, history and config (in that order), each atomically.

        resume.safetensors is one file (weights, optimizer tensors, trainer state as JSON
        metadata), so it is consistent by construction; model.safetensors may lag it by one
        checkpoint after a crash, which only matters for viewing.
        """
        if self.run_dir is None or not self.is_main:
            return
        d = self.run_dir
        weights = self.model.state_dict_for_save()
        R.save_resume(d / R.RESUME_FILE, weights, self.optimizer.state_dict()["state"], {
            "step": self.step_count, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed_s,
            "best_val_loss": _finite_or_none(self.best_val_loss), "best_step": self.best_step,
            "evals_since_best": self._evals_since_best, "last_finite_loss": self.last_finite_loss,
            "world_size": self.world_size, "n_params": len(self._params),
        })
        R.save_safetensors(d / R.MODEL_FILE, weights, {"step": str(self.step_count)})
        self._last_ckpt_step = self.step_count
        self._write_history(fsync=True)
        R.atomic_write_json(d / R.CONFIG_FILE, self._run_config(state, **status).to_dict())

    def save_checkpoint(self) -> None:
        """Write a checkpoint now (a no-op without ``run_dir``); safe between steps."""
        with self._lock:
            self._save_checkpoint(state=self._status if self._status != "idle" else "stopped")

    def _load_checkpoint(self) -> None:
        d = self.run_dir
        cfg = R.load_run_config(d)
        if cfg.model != self.model.config:
            raise ValueError(f"{d / R.CONFIG_FILE} describes a different model ({cfg.model}) than "
                             f"the one given ({self.model.config}); resume with the run's own model")
        if cfg.corpus_sha256 and cfg.corpus_sha256 != self.text_sha256:
            raise ValueError(f"the training text differs from the one the run in {d} was trained on "
                             f"(corpus {cfg.corpus!r}, sha256 {cfg.corpus_sha256[:12]}…); resume with the same text")
        where = d / R.RESUME_FILE
        weights, state, st = R.load_resume(where, len(self._params))
        step = int(st["step"])
        try:
            self.model.load_weights(weights)
        except ValueError as e:
            raise ValueError(f"{where} does not fit the model: {e}") from None
        groups = self.optimizer.state_dict()["param_groups"]
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{where} holds optimizer state that does not fit: {e}") from None
        self.step_count = step
        self._last_ckpt_step = step
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.elapsed_s = float(st.get("elapsed_s", 0.0))
        bv = st.get("best_val_loss")
        self.best_val_loss = float(bv) if bv is not None else math.inf
        self.best_step = st.get("best_step")
        self._evals_since_best = int(st.get("evals_since_best", 0))
        self.last_finite_loss = st.get("last_finite_loss")
        self._created = cfg.created
        # history, samples, snapshots: keep what the checkpoint had seen, drop what came after
        hist = R.read_history(d / R.HISTORY_FILE)
        hist = hist[hist["step"] <= step]
        rows = []
        for rec in hist.to_dict("records"):
            row = {c: rec.get(c, math.nan) for c in self.columns}
            row["step"] = int(rec["step"])
            rows.append(row)
        self._rows = rows
        self._lines = [R.history_line(self.columns, r) for r in rows]
        self.samples = [s for s in R._read_samples(d / R.SAMPLES_FILE) if s["step"] <= step]
        self._head_records = [r for r in R._read_head_scores(d / R.HEAD_SCORES_FILE) if r["step"] <= step]
        if self.is_main:
            for sstep in R.list_snapshot_steps(d):
                if sstep > step:
                    R.snapshot_path(d, sstep).unlink(missing_ok=True)
            best = d / R.BEST_FILE
            if best.exists() and (self.best_step is None or self.best_step > step):
                best.unlink()
            self._write_history(fsync=True)
            R.atomic_write_json(d / R.SAMPLES_FILE, self.samples)
            R.atomic_write_json(d / R.HEAD_SCORES_FILE, self._head_records)
        if step >= self.config.max_steps:
            self._status = "finished"
            self._reason = "max_steps"
        log.info("resumed %s at step %d", d, step)

    # ------------------------------------------------------------------ running

    def step(self) -> dict[str, Any]:
        """One training step and the bookkeeping due at it (row, evaluation, snapshot, checkpoint).

        Returns the step's metrics (the full history row at logged steps). Raises
        ``ValueError`` while a background run is going (pause it first), when the run has
        ended, and when the loss diverges (the status becomes ``diverged``).
        """
        with self._lock:
            if self._status == "running" and self._thread is not None and self._thread.is_alive():
                raise ValueError("training is running in the background; pause() it before stepping by hand")
            if self._status in ("finished", "diverged", "failed"):
                raise ValueError(f"the run has {self._status} at step {self.step_count}; start a new one")
        out, early = self._advance()
        if early:
            self._finish("finished", "early_stopping")
        return out

    def _advance(self) -> tuple[dict[str, Any], bool]:
        with self._step_lock:
            return self._advance_locked()

    def _advance_locked(self) -> tuple[dict[str, Any], bool]:
        t0 = time.perf_counter()
        try:
            out = self._optimizer_step(measure=self._is_row_step(self.step_count + 1))
            early = self._bookkeeping(out)
        except Diverged as e:
            self._diverge(str(e))
            raise ValueError(self.error) from None
        except Exception as e:
            if is_oom(e):
                self._fail(self._oom_message())
                raise ValueError(self.error) from None
            raise
        finally:
            dt = time.perf_counter() - t0
            self.elapsed_s += dt
            self._session_time += dt
        self._session_steps += 1
        return out, early

    def _oom_message(self) -> str:
        cfg, tc = self.model.config, self.config
        return (f"out of memory on {self.device.type} at step {self.step_count + 1} (batch_size "
                f"{tc.batch_size}, block_size {cfg.block_size}, n_embd {cfg.n_embd}, n_layer {cfg.n_layer}); "
                f"reduce batch_size, block_size or the model size, or train on another device")

    def _diverge(self, what: str) -> None:
        last = self.last_finite_loss
        msg = (f"training diverged: {what}; the last finite loss was "
               f"{last if last is None else round(last, 6)}; the last good checkpoint is step "
               f"{self._ckpt_step}. Lower learning_rate or raise warmup_steps")
        with self._lock:
            self._error = msg
        self.optimizer.zero_grad(set_to_none=True)
        self._end("diverged", "diverged", diverged_at=self.step_count + 1)

    def _fail(self, msg: str) -> None:
        with self._lock:
            self._error = msg
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._end("failed", "failed")

    def _finish(self, state: str, reason: str) -> None:
        """End cleanly: a final row with a val loss, a snapshot and a checkpoint."""
        with self._lock:
            self._reason = reason
        self._final_row()
        self._end(state, reason)

    def _end(self, state: str, reason: str, **status: Any) -> None:
        with self._lock:
            self._status = state
            self._reason = reason
            self._ended = True
        if self.run_dir is not None and self.is_main:
            if state == "finished" and not self.config.keep_resume_state:
                # a slim folder (e.g. the shipped default model): weights, no optimizer state
                self._save_checkpoint(state=state, reason=reason, resumable=False, **status)
                (self.run_dir / R.RESUME_FILE).unlink(missing_ok=True)
            elif state in ("finished", "stopped"):
                self._save_checkpoint(state=state, reason=reason, **status)
            else:  # keep the last good checkpoint; only record what happened
                self._write_history(fsync=True)
                cfg = self._run_config(state, reason=reason, **status)
                R.atomic_write_json(self.run_dir / R.CONFIG_FILE, cfg.to_dict())
        summary = {"status": state, "reason": reason, "step": self.step_count, "error": self._error}
        if self.is_main:
            for cb in self.on_end:
                try:
                    cb(dict(summary))
                except Exception:  # the run is over; a failing on_end must not hide its result
                    log.exception("on_end callback failed")

    def _done_reason(self) -> str | None:
        tc = self.config
        if self.step_count >= tc.max_steps:
            return "max_steps"
        if tc.max_seconds is not None and self.elapsed_s >= tc.max_seconds:
            return "max_seconds"
        return None

    def run(self) -> str:
        """Train in the calling thread until the run ends; returns the final status.

        Ends at ``max_steps``, ``max_seconds``, early stopping, divergence, a failure, or
        :meth:`stop` (from a callback or another thread). Ctrl-C stops it cleanly with a
        checkpoint. Errors are reported in :attr:`status` / :attr:`error`, not raised.
        """
        with self._lock:
            if self._status in ("finished", "diverged", "failed"):
                raise ValueError(f"the run has {self._status} at step {self.step_count}; start a new one")
            worker = self._thread
            if worker is not None and worker.is_alive() and worker is not threading.current_thread():
                raise ValueError("training is already running in the background; stop() it first")
            self._status = "running"
            self._error = None
            self._ended = False
        self.configure_threads()
        if self.run_dir is not None and self.is_main:
            R.atomic_write_json(self.run_dir / R.CONFIG_FILE, self._run_config("running").to_dict())
        try:
            while True:
                reason = self._done_reason()
                stop = self._stop_flag.is_set()
                if self._all_ranks_any(reason is not None or stop):
                    reason = reason or ("stopped" if stop else "max_seconds")
                    break
                if not self._run_flag.is_set():
                    with self._lock:
                        self._status = "paused"
                    self._paused_ack.set()
                    while not self._run_flag.wait(0.05):
                        if self._stop_flag.is_set():
                            break
                    self._paused_ack.clear()
                    with self._lock:
                        if self._status == "paused":
                            self._status = "running"
                    continue
                try:
                    _, early = self._advance()
                except ValueError:
                    if self._ended:  # diverged or out of memory: already recorded
                        return self.status
                    raise
                if early:
                    reason = "early_stopping"
                    break
        except KeyboardInterrupt:
            reason = "stopped"
        except Exception as e:
            log.exception("training failed")
            if not self._ended:
                self._fail(self._oom_message() if is_oom(e) else
                           str(e) if isinstance(e, CallbackError) else f"{type(e).__name__}: {e}")
            return self.status
        if reason == "stopped":
            self._finish("stopped", "stopped")
        else:
            self._finish("finished", reason)
        return self.status

    def start(self) -> None:
        """Train in a background thread and return at once.

        Raises ``ValueError`` if a background run is already going (one trainer never runs
        two loops) or the run has ended (finished, diverged, failed). A stopped run may be
        started again: it continues from where it stopped.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise ValueError("training is already running in the background; pause(), resume() or stop() it")
            if self._status in ("finished", "diverged", "failed"):
                raise ValueError(f"the run has {self._status} at step {self.step_count}; start a new one")
            self._stop_flag.clear()
            self._run_flag.set()
            self._status = "running"
            self._thread = threading.Thread(target=self._worker, name="lm_core-trainer", daemon=True)
            self._thread.start()

    def _worker(self) -> None:
        try:
            self.run()
        except Exception as e:  # run() records errors itself; this is a last resort
            log.exception("training thread crashed")
            with self._lock:
                self._status, self._error = "failed", f"{type(e).__name__}: {e}"

    def pause(self, wait: bool = False, timeout: float | None = 10.0) -> None:
        """Pause after the step in progress. With ``wait``, return once the worker has paused."""
        with self._lock:
            if self._status != "running":
                return
            self._run_flag.clear()
            self._status = "paused"
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            self._paused_ack.wait(timeout)

    def resume(self) -> None:
        """Continue a paused background run (nothing happens otherwise)."""
        with self._lock:
            if self._status == "paused":
                self._status = "running"
            self._run_flag.set()

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop after the step in progress, with a final evaluation and checkpoint.

        Idempotent; returns once the worker has ended (unless ``wait=False`` or when called
        from a callback inside the worker).
        """
        self._stop_flag.set()
        self._run_flag.set()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def join(self, timeout: float | None = None) -> str:
        """Wait for a background run to end; returns the status."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return self.status


def _finite_or_none(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
