"""Command line: ``python -m lm_core train|sample``.

Examples::

    python -m lm_core train --preset nanogpt-cpu --out runs/shakespeare
    python -m lm_core train --corpus builtin:python-docs --n-layer 2 --max-steps 500 --out runs/py
    python -m lm_core train --out runs/shakespeare --resume          # continue exactly
    python -m lm_core train --preset llama-cpu --out runs/llama      # RMSNorm, rotary, SwiGLU, GQA
    python -m lm_core train --init-from gpt2 --corpus tiny-shakespeare --block-size 128 \
        --freeze all-but-last:2 --lr 3e-5 --max-steps 200 --out runs/gpt2-shakespeare   # fine-tune
    torchrun --standalone --nproc_per_node 2 -m lm_core train --preset nanogpt-cpu --out runs/ddp
    python -m lm_core sample --run runs/shakespeare --prompt "ROMEO:" --max-new-tokens 200

Explicit flags override the preset's values. A bad argument, a bad run folder or a failed
run exits non-zero with one line on stderr, no traceback (set ``LM_LENS_DEBUG=1`` for one).
Under ``torchrun`` (env ``WORLD_SIZE`` > 1) training uses DistributedDataParallel (gloo on
CPU, NCCL on CUDA): each rank draws its own batches, only rank 0 writes and prints.
A run is built by :func:`lm_core.recipes.build_trainer`; while it trains, another process
may pause, resume or stop it through ``<out>/control.json`` and watch ``<out>/status.json``
(see :mod:`lm_core.train.control`, :func:`lm_core.runs.read_status`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .runtime import tune_allocator

log = logging.getLogger("lm_core.cli")


class UsageError(Exception):
    """A bad command line (argparse's complaint, as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; we want one line
        raise UsageError(f"{self.prog}: {message}")


# flag -> (config, field); None = not a config field
_MODEL_FLAGS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd", "block_size": "block_size",
                "dropout": "dropout", "bias": "bias", "norm": "norm", "pos": "pos", "rope_base": "rope_base",
                "rotary_pct": "rotary_pct", "mlp": "mlp", "d_mlp": "d_mlp", "n_kv_head": "n_kv_head",
                "d_head": "d_head", "parallel_residual": "parallel_residual", "qk_norm": "qk_norm",
                "sliding_window": "sliding_window", "tie_embeddings": "tie_embeddings",
                "qkv_bias": "qkv_bias", "attn_bias": "attn_bias", "mlp_bias": "mlp_bias", "norm_bias": "norm_bias"}
_TRAIN_FLAGS = {"batch_size": "batch_size", "lr": "learning_rate", "max_steps": "max_steps",
                "warmup_steps": "warmup_steps", "min_lr": "min_lr", "weight_decay": "weight_decay",
                "beta1": "beta1", "beta2": "beta2",
                "grad_clip": "grad_clip", "eval_interval": "eval_interval", "eval_iters": "eval_iters",
                "seed": "seed", "log_interval": "log_interval", "checkpoint_interval": "checkpoint_interval",
                "max_seconds": "max_seconds", "early_stopping_patience": "early_stopping_patience",
                "sample_tokens": "sample_tokens", "device": "device", "num_threads": "num_threads",
                "schedule": "schedule", "snapshots": "snapshots", "save_best": "save_best",
                "precision": "precision"}


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _freeze(s: str) -> str | None:
    from .config import parse_freeze

    try:
        parse_freeze(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return None if s == "none" else s


def build_parser() -> argparse.ArgumentParser:
    from .presets import PRESETS

    p = _Parser(prog="python -m lm_core", description="LM Lens: train and sample small GPTs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a GPT on a corpus; every value not given comes from --preset "
                                   "(if any), else from ModelConfig/TrainConfig defaults.")
    t.add_argument("--out", required=True, help="run folder to write (or to continue with --resume)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="start from a named recipe")
    t.add_argument("--corpus", help="builtin:python-docs, tiny-shakespeare, synthetic:<task> or a file path")
    t.add_argument("--tokenizer", choices=["char", "bpe"])
    t.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default 512)")
    t.add_argument("--n-layer", type=int)
    t.add_argument("--n-head", type=int)
    t.add_argument("--n-embd", type=int)
    t.add_argument("--block-size", type=int)
    t.add_argument("--dropout", type=float)
    t.add_argument("--bias", type=_bool, help="biases everywhere (default true); the flags below override parts")
    lay = t.add_argument_group("layout", "the switches of today's open models (default: GPT-2's layout); "
                                         "e.g. Llama: --norm rmsnorm --pos rotary --mlp swiglu --n-kv-head 2 "
                                         "--bias false --tie-embeddings false")
    lay.add_argument("--norm", choices=["layernorm", "rmsnorm"])
    lay.add_argument("--pos", choices=["learned", "rotary", "none"], help="position signal")
    lay.add_argument("--rope-base", type=float, help="rotary wavelength base (default 10000)")
    lay.add_argument("--rotary-pct", type=float, help="share of each head rotary rotates (default 1.0)")
    lay.add_argument("--mlp", choices=["gelu", "swiglu"])
    lay.add_argument("--d-mlp", type=int, help="MLP hidden width (default 4 x n_embd)")
    lay.add_argument("--n-kv-head", type=int, help="key/value heads: n_head multi-head, fewer grouped-query, 1 multi-query")
    lay.add_argument("--d-head", type=int, help="size of each head (default n_embd / n_head)")
    lay.add_argument("--parallel-residual", type=_bool, help="attention and MLP read the same input (GPT-NeoX)")
    lay.add_argument("--qk-norm", type=_bool, help="RMSNorm on each head's q and k (Qwen3)")
    lay.add_argument("--sliding-window", type=int, help="each query sees at most this many recent positions")
    lay.add_argument("--tie-embeddings", type=_bool, help="lm_head shares the token embedding (default true)")
    lay.add_argument("--attn-bias", type=_bool, help="biases of q/k/v and the attention output (default: --bias)")
    lay.add_argument("--qkv-bias", type=_bool, help="biases of q/k/v only (default: --attn-bias)")
    lay.add_argument("--mlp-bias", type=_bool, help="biases of the MLP (default: --bias)")
    lay.add_argument("--norm-bias", type=_bool, help="LayerNorm biases (default: --bias; RMSNorm has none)")
    ft = t.add_argument_group("fine-tuning", "start from a pretrained model instead of random weights")
    ft.add_argument("--init-from", metavar="NAME_OR_FOLDER",
                    help="a hub name (gpt2, HuggingFaceTB/SmolLM2-135M, EleutherAI/pythia-70m, …) or a folder "
                         "with config.json + model.safetensors + tokenizer.json; its tokenizer is used")
    ft.add_argument("--revision", help="hub branch, tag or commit of --init-from (e.g. Pythia's step1000)")
    ft.add_argument("--freeze", type=_freeze, metavar="WHAT",
                    help="parameters that do not train: embeddings (token and position embeddings; tied, the "
                         "unembedding too) or all-but-last:K (only the last K blocks, the final norm and an "
                         "untied lm_head train)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--min-lr", type=float)
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--grad-clip", type=float)
    t.add_argument("--beta1", type=float, help="AdamW beta1 (default 0.9)")
    t.add_argument("--beta2", type=float, help="AdamW beta2 (default 0.99)")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--max-seconds", type=float, help="stop after this much wall-clock training time")
    t.add_argument("--schedule", choices=["steps", "time"], help="what the cosine decay follows")
    t.add_argument("--eval-interval", type=int)
    t.add_argument("--eval-iters", type=int)
    t.add_argument("--log-interval", type=int)
    t.add_argument("--checkpoint-interval", type=int)
    t.add_argument("--early-stopping-patience", type=int)
    t.add_argument("--sample-tokens", type=int, help="length of the sample generated at each evaluation")
    t.add_argument("--snapshots", type=int, help="weight snapshots kept for time travel (default 20; 0 = none)")
    t.add_argument("--save-best", type=_bool, help="keep best.safetensors (default true)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--num-threads", type=int, help="CPU threads (default: every core)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--no-optimizer-state", action="store_true",
                   help="delete resume.safetensors once the run finishes (a folder a third the size, "
                        "which cannot be continued; a crash mid-run can still resume)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")

    s = sub.add_parser("sample", help="generate text from a run folder")
    s.add_argument("--run", required=True, help="run folder")
    s.add_argument("--prompt", default="\n")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--best", action="store_true", help="use the best-validation weights")
    return p


# ----------------------------------------------------------------------------- distributed

def _setup_distributed(device: str | None) -> tuple[int, int, str | None]:
    """Initialise torch.distributed under torchrun. Returns (rank, world_size, device override)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), (f"cuda:{local}" if use_cuda else "cpu")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- progress

def _fmt_time(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Progress:
    """tqdm bar on a terminal; otherwise one line per evaluation."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        self.enabled = enabled
        self.last = initial
        self.val = ""
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_step(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(row["step"] - self.last)
            post = {"loss": f"{row['train_loss']:.3f}"} if math.isfinite(row["train_loss"]) else {}
            if not math.isnan(row.get("val_loss", math.nan)):
                self.val = f"{row['val_loss']:.3f}"
            if self.val:
                post["val"] = self.val  # the latest evaluation
            post["tok/s"] = f"{row['tokens_per_s']:,.0f}" if math.isfinite(row["tokens_per_s"]) else "?"
            self.bar.set_postfix(post, refresh=False)
        self.last = row["step"]

    def on_eval(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if math.isnan(row["train_loss"]):  # step 0: the untrained model
            line = f"step {row['step']}: val loss {row['val_loss']:.4f} ({row['val_bpc']:.3f} bits/char)"
        else:
            line = (f"step {row['step']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f} "
                    f"({row['val_bpc']:.3f} bits/char), {row['tokens_per_s']:,.0f} tok/s, "
                    f"elapsed {_fmt_time(row['elapsed_s'])}, ETA {_fmt_time(row['eta_s'])}")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- commands

@contextlib.contextmanager
def _graceful_stop(trainer, distributed: bool):
    """First Ctrl-C (or SIGTERM): stop after the current step with a checkpoint; second: abort.

    Stopping between steps keeps the checkpoint exact; a KeyboardInterrupt could land between
    the weight update and the step counter.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = []

    def handler(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        if trainer.is_main:
            print("stopping after this step with a checkpoint (Ctrl-C again to abort)", file=sys.stderr, flush=True)
        trainer.stop(wait=False)

    sigs = [signal.SIGINT] + ([signal.SIGTERM] if not distributed else [])
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def baselines_line(baselines: list[dict[str, Any]]) -> str:
    """One line: ``baseline val loss: unigram 3.29 · bigram Markov chain 2.47 · … (nats/token)``."""
    return ("baseline val loss: " + " · ".join(f"{b['name']} {b['val_loss']:.2f}" for b in baselines)
            + " (nats/token)")


def _given(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, flag) for flag, field in mapping.items() if getattr(args, flag) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from .recipes import build_trainer

    out = Path(args.out)
    rank, world, dist_device = _setup_distributed(args.device)
    train_over = _given(args, _TRAIN_FLAGS)
    if dist_device is not None:
        train_over["device"] = dist_device
    if args.no_optimizer_state:
        train_over["keep_resume_state"] = False
    progress = _Progress(0, 0, False)
    try:
        trainer = build_trainer(args.corpus, args.tokenizer, preset=args.preset,
                                model_overrides=_given(args, _MODEL_FLAGS), train_overrides=train_over,
                                run_dir=out, resume=args.resume, overwrite=args.overwrite,
                                vocab_size=args.vocab_size, init_from=args.init_from, revision=args.revision,
                                freeze=args.freeze)
        show = rank == 0 and not args.quiet
        if show and trainer.baselines:
            print(baselines_line(trainer.baselines), flush=True)
        progress = _Progress(trainer.config.max_steps, trainer.step_count, show)
        trainer.on_step.append(progress.on_step)
        trainer.on_eval.append(progress.on_eval)
        if trainer.status == "finished":  # resumed at or past max_steps: nothing left to train
            status = trainer.status
        else:
            with _graceful_stop(trainer, distributed=world > 1):
                status = trainer.run()
        _barrier()  # rank 0 may still be writing its last checkpoint; part only when all are done
    finally:
        progress.close()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if status in ("diverged", "failed"):
        raise ValueError(trainer.error or f"training {status}")
    if rank == 0:
        row = trainer.latest
        val = row.get("val_loss", math.nan)
        print(f"{status} ({trainer.reason}) at step {trainer.step_count}: val loss {val:.4f} "
              f"({row.get('val_bpc', math.nan):.3f} bits/char) after {_fmt_time(trainer.elapsed_s)}; "
              f"run folder {out}", flush=True)
    return 130 if trainer.reason == "stopped" else 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .generate import generate_text
    from .runs import load_run

    run = load_run(args.run)
    model = run.model
    if args.best:
        best = run.load_best()
        if best is None:
            raise ValueError(f"{args.run} has no best.safetensors yet (no evaluation has run)")
        model = best[0]
    text = generate_text(model, run.tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(args.prompt + text, flush=True)
    return 0


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 error, 2 bad arguments, 130 interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    debug = os.environ.get("LM_LENS_DEBUG") == "1"
    tune_allocator()
    try:
        args = build_parser().parse_args(argv)
        return cmd_train(args) if args.command == "train" else cmd_sample(args)
    except UsageError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, always; LM_LENS_DEBUG=1 shows the traceback
        if debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {_one_line(e)} (set LM_LENS_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
