"""Benchmarks for lm_core's inspection and generation targets (DESIGN §5). Prints JSON lines.

    .venv/bin/python bench/bench_core.py [--quick]

One ``json.dumps`` per line, each with a ``"metric"`` key:

* ``capture_overhead``: ``model.run_with_cache(idx)`` (every hook) ÷ ``model(idx)`` under
  ``torch.no_grad`` in eval mode at T = block_size. Target ≤ 1.5. Rows with ``capture`` =
  ``"patterns"`` / ``"noop_hooks"`` split the cost (explicit attention path vs hook calls).
* ``transformer_lens_capture``: ``run_with_cache`` (every hook point) of TransformerLens'
  ``HookedTransformer`` ÷ lm_core's at the same shapes (``tl_over_ours`` > 1: lm_core is ahead),
  or why it was skipped (TransformerLens is not a dependency: run with a Python that has it).
* ``kv_cache_speedup``: ``lm_core.generate`` ms/token with the KV cache vs recomputing, at a
  256-token context. Target ≥ 3.
* ``capture_step``: one generation step with ``capture=True`` on the default-size model.

Timings are medians over interleaved repeats after a warmup, so drifting machine load hits
both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import lm_core  # noqa: E402
from lm_core.runtime import tune_allocator  # noqa: E402


ALLOCATOR = "default"


def emit(metric: str, **fields) -> None:
    print(json.dumps({"metric": metric, **fields}), flush=True)


def _model(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int) -> lm_core.GPT:
    torch.manual_seed(0)
    cfg = lm_core.ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                              n_head=n_head, n_embd=n_embd, dropout=0.0)
    return lm_core.GPT(cfg).eval()


def _time_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median ms of each function, run round-robin ``repeats`` times after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            t = _time_ms(fn)
            if i >= warmup:
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_capture(name: str, dims: dict, batch: int, repeats: int) -> None:
    model = _model(**dims)
    T = dims["block_size"]
    idx = torch.randint(0, dims["vocab_size"], (batch, T), generator=torch.Generator().manual_seed(1))

    def noop(t, n):
        return None

    def plain():
        model(idx)

    def full():
        model.run_with_cache(idx)

    def patterns():  # forces the explicit attention path, stores little
        model.run_with_cache(idx, names=lambda n: n.endswith("hook_pattern"))

    def noop_hooks():  # a hook on every point except the attention ones: pure call overhead, fused path
        with model.hooks([(lambda n: not n.endswith(("hook_pattern", "hook_attn_scores")), noop)]):
            model(idx)

    with torch.no_grad():
        med = _interleaved({"plain": plain, "full": full, "patterns": patterns, "noop_hooks": noop_hooks},
                           repeats=repeats, warmup=3)
    base = med["plain"]
    emit("capture_overhead", model=name, batch=batch, T=T, allocator=ALLOCATOR, capture="all", plain_ms=round(base, 3),
         capture_ms=round(med["full"], 3), ratio=round(med["full"] / base, 3), target_max=1.5,
         ok=med["full"] / base <= 1.5, repeats=repeats)
    for part in ("patterns", "noop_hooks"):
        emit("capture_overhead", model=name, batch=batch, T=T, allocator=ALLOCATOR, capture=part, plain_ms=round(base, 3),
             capture_ms=round(med[part], 3), ratio=round(med[part] / base, 3), repeats=repeats)


def bench_transformer_lens(shapes: dict[str, dict], repeats: int) -> None:
    """``run_with_cache`` of lm_core vs TransformerLens' ``HookedTransformer`` at the same shapes.

    TransformerLens is not a dependency of LM Lens; run this file with a Python that has it
    (e.g. a separate venv with ``pip install transformer_lens``) to get the rows. Both models are
    random GPT-2-style (LayerNorm, GELU-tanh, learned positions, d_mlp = 4 d), in eval mode under
    ``torch.no_grad``, caching every hook point.
    """
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:  # not installed, or TransformerLens >= 4 (HookedTransformer removed: use 3.x)
        emit("transformer_lens_capture", skipped=True,
             reason=f"transformer_lens is not importable ({e}); it is not a dependency of LM Lens: run this "
                    f"bench with a Python that has it (pip install transformer_lens in a separate venv)")
        return
    from importlib.metadata import version

    for name, dims in shapes.items():
        d, H = dims["n_embd"], dims["n_head"]
        cfg = HookedTransformerConfig(n_layers=dims["n_layer"], d_model=d, n_ctx=dims["block_size"], d_head=d // H,
                                      n_heads=H, d_mlp=4 * d, d_vocab=dims["vocab_size"], act_fn="gelu_new",
                                      normalization_type="LN", device="cpu", seed=0)
        tl = HookedTransformer(cfg).eval()
        ours = _model(**dims)
        for batch in (1, 8):
            idx = torch.randint(0, dims["vocab_size"], (batch, dims["block_size"]),
                                generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                _, tl_cache = tl.run_with_cache(idx)
                _, our_cache = ours.run_with_cache(idx)
                med = _interleaved({"tl": lambda: tl.run_with_cache(idx), "ours": lambda: ours.run_with_cache(idx),
                                    "tl_plain": lambda: tl(idx), "ours_plain": lambda: ours(idx)},
                                   repeats=repeats if batch == 1 else max(5, repeats // 3), warmup=3)
            emit("transformer_lens_capture", model=name, batch=batch, T=dims["block_size"], allocator=ALLOCATOR,
                 transformer_lens=version("transformer_lens"),
                 hook_points_tl=len(tl_cache), hook_points_ours=len(our_cache),
                 tl_capture_ms=round(med["tl"], 3), ours_capture_ms=round(med["ours"], 3),
                 tl_plain_ms=round(med["tl_plain"], 3), ours_plain_ms=round(med["ours_plain"], 3),
                 tl_over_ours=round(med["tl"] / med["ours"], 2), ok=med["tl"] > med["ours"])


def _generate_step_ms(model, prompt: list[int], new: int, use_kv_cache: bool) -> list[float]:
    """Wall time (ms) of each generated token; step 0 includes the prompt's prefill."""
    out = []
    t0 = time.perf_counter()
    for _ in lm_core.generate(model, prompt, max_new_tokens=new, temperature=1.0, seed=0,
                              capture=False, use_kv_cache=use_kv_cache):
        t1 = time.perf_counter()
        out.append((t1 - t0) * 1e3)
        t0 = t1
    return out


def bench_kv_cache(repeats: int) -> None:
    dims = dict(vocab_size=65, block_size=512, n_layer=4, n_head=4, n_embd=128)
    model = _model(**dims)
    prompt = torch.randint(0, 65, (256,), generator=torch.Generator().manual_seed(2)).tolist()
    new = 32
    _generate_step_ms(model, prompt, 4, True)  # warmup
    _generate_step_ms(model, prompt, 4, False)
    per_token = {True: [], False: []}
    steady = {True: [], False: []}
    for _ in range(repeats):  # interleaved
        for kv in (True, False):
            steps = _generate_step_ms(model, prompt, new, kv)
            per_token[kv].append(sum(steps) / len(steps))
            steady[kv].extend(steps[1:])
    kv, re = statistics.median(per_token[True]), statistics.median(per_token[False])
    kv_s, re_s = statistics.median(steady[True]), statistics.median(steady[False])
    emit("kv_cache_speedup", model="4x4x128", block_size=512, prompt_tokens=len(prompt), new_tokens=new,
         kv_ms_per_token=round(kv, 3), recompute_ms_per_token=round(re, 3), speedup=round(re / kv, 2),
         kv_step_ms_after_prefill=round(kv_s, 3), recompute_step_ms_after_prefill=round(re_s, 3),
         speedup_after_prefill=round(re_s / kv_s, 2), target_min=3.0, ok=re / kv >= 3.0, repeats=repeats,
         note="ms_per_token: all 32 tokens, the first step's 256-token prefill amortised; "
              "after_prefill: median of steps 2..32")


def bench_capture_step(repeats: int) -> None:
    dims = dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128)
    model = _model(**dims)
    prompt = torch.randint(0, 65, (64,), generator=torch.Generator().manual_seed(3)).tolist()
    first, later = [], []
    for r in range(repeats + 1):
        steps = lm_core.generate(model, prompt, max_new_tokens=5, seed=0, capture=True, use_kv_cache=True)
        t0 = time.perf_counter()
        times = []
        for _ in steps:
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1e3)
            t0 = t1
        if r:  # the first round is warmup
            first.append(times[0])
            later.extend(times[1:])
    emit("capture_step", model="4x4x128", block_size=128, prompt_tokens=len(prompt),
         first_step_ms=round(statistics.median(first), 3), next_step_ms=round(statistics.median(later), 3),
         note="first step: prefill of the 64-token prompt with every activation captured; "
              "next steps: one new position through the KV cache, captured", repeats=repeats)


def main() -> None:
    global ALLOCATOR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    ap.add_argument("--tuned-malloc", action="store_true", help="apply lm_core.runtime.tune_allocator() first")
    ap.add_argument("--capture-only", action="store_true",
                    help="only the capture_overhead (and transformer_lens_capture) rows")
    ap.add_argument("--no-tuned-rerun", action="store_true",
                    help="do not rerun the capture rows in a subprocess with the tuned allocator")
    args = ap.parse_args()
    if args.tuned_malloc:
        os.environ.pop("LM_LENS_NO_MALLOC_TUNING", None)
        ALLOCATOR = tune_allocator()
    else:
        # the untuned baseline: keep run_with_cache from tuning the allocator itself
        os.environ["LM_LENS_NO_MALLOC_TUNING"] = "1"
    rep = 15 if args.quick else 60
    if not args.capture_only:
        emit("environment", torch=torch.__version__, python=platform.python_version(),
             threads=torch.get_num_threads(), machine=platform.machine(), allocator=ALLOCATOR)
    shapes = {
        "4x4x128 (nanoGPT CPU)": dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
        "6x6x192": dict(vocab_size=65, block_size=128, n_layer=6, n_head=6, n_embd=192),
    }
    for name, dims in shapes.items():
        for batch in (1, 8):
            bench_capture(name, dims, batch, rep if batch == 1 else max(5, rep // 3))
    bench_transformer_lens(shapes, rep)
    if args.capture_only:
        return
    bench_kv_cache(repeats=2 if args.quick else 5)
    bench_capture_step(repeats=3 if args.quick else 10)
    if not args.tuned_malloc and not args.no_tuned_rerun:
        # mallopt cannot be undone cleanly in-process: measure the tuned allocator in a child
        cmd = [sys.executable, __file__, "--capture-only", "--tuned-malloc"] + (["--quick"] if args.quick else [])
        env = {k: v for k, v in os.environ.items() if k != "LM_LENS_NO_MALLOC_TUNING"}
        subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
