"""lm_core against transformers at real size, on the CPU (issue 11 item 7). Prints JSON lines.

    .venv/bin/python bench/bench_families.py [--repeats N] [--models gpt2-124m,smollm2-135m]

Random-weight models with the shapes of GPT-2 124M and SmolLM2-135M (Llama layout: RMSNorm,
rotary, SwiGLU, 9 query heads sharing 3 key/value heads, 30 layers), converted with
``GPT.from_hf`` from transformers' own model (eager attention). One ``json.dumps`` per line:

* ``forward``: ``model(idx)`` vs transformers' ``model(idx, output_attentions=True)`` at
  T = 128 (``ratio`` = ours / theirs; goal ≤ 0.7). Ours takes the fused kernel (nobody watches).
* ``run_with_cache``: every hook (``all``) and the patterns only (``patterns``) vs the same
  transformers call, which returns the patterns.
* ``generate``: 64 greedy tokens after a 128-token prompt, ``lm_core.generate`` with the KV cache
  and ``capture=True`` (every activation of every step) vs ``generate(..., output_attentions=True,
  return_dict_in_generate=True)``.
* ``peak_memory``: peak resident memory above the loaded model (Linux VmHWM, reset before the
  call) of one ``run_with_cache`` (every hook) at T = 512, and of transformers'
  ``output_attentions=True`` forward, each in a fresh process; ``*_mib`` what the result holds.

Timings are medians of interleaved repeats after a warmup, ``torch.no_grad``, batch 1; ``ratio`` is the
median of per-repeat ratios (two calls back to back), ``ratio_of_min`` fastest against fastest.
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

SHAPES = {
    "gpt2-124m": ("GPT2Config", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
    "smollm2-135m": ("LlamaConfig", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
}


def emit(metric: str, **fields) -> None:
    print(json.dumps({"metric": metric, **fields}), flush=True)


def build(name: str):
    import transformers

    cls, kw = SHAPES[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls)(**kw, bos_token_id=0, eos_token_id=0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    return hf, lm_core.GPT.from_hf(hf)


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def compare(ours, theirs, repeats: int) -> dict:
    """Interleaved timings: each repeat times ours, then theirs, alternating which goes first.

    This machine's speed drifts (shared host: the same call varies by 2× within a minute), so the
    ``ratio`` is the median of the per-repeat ratios, each taken from two calls made back to back;
    ``ratio_of_min`` (fastest against fastest) is given beside it as a check.
    """
    ours(), theirs()  # warmup
    a, b = [], []
    for i in range(repeats):
        if i % 2:
            b.append(_ms(theirs))
            a.append(_ms(ours))
        else:
            a.append(_ms(ours))
            b.append(_ms(theirs))
    return dict(ours_ms=round(statistics.median(a), 1), transformers_ms=round(statistics.median(b), 1),
                ratio=round(statistics.median(x / y for x, y in zip(a, b)), 3),
                ratio_of_min=round(min(a) / min(b), 3), repeats=repeats)


def bench_model(name: str, repeats: int) -> None:
    hf, ours = build(name)
    V = ours.config.vocab_size
    idx = torch.randint(0, V, (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emit("forward", model=name, T=128, **compare(lambda: ours(idx), lambda: hf(idx, output_attentions=True),
                                                      repeats))
        emit("run_with_cache", model=name, T=128, capture="all",
             **compare(lambda: ours.run_with_cache(idx), lambda: hf(idx, output_attentions=True), repeats))
        pat = lambda n: n.endswith("hook_pattern")  # noqa: E731
        emit("run_with_cache", model=name, T=128, capture="patterns",
             **compare(lambda: ours.run_with_cache(idx, names=pat), lambda: hf(idx, output_attentions=True), repeats))

    prompt = idx[0].tolist()

    def ours_gen():
        steps = list(lm_core.generate(ours, prompt, max_new_tokens=64, temperature=0, capture=True,
                                      use_kv_cache=True))
        assert len(steps) == 64

    def hf_gen():
        with torch.no_grad():
            out = hf.generate(idx, max_new_tokens=64, min_new_tokens=64, do_sample=False, output_attentions=True,
                              return_dict_in_generate=True, pad_token_id=0)
        assert len(out.attentions) == 64

    r = compare(ours_gen, hf_gen, repeats)
    emit("generate", model=name, prompt=128, new_tokens=64, capture=True, ours_ms_per_token=round(r["ours_ms"] / 64, 2),
         **r)


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_child(name: str, which: str) -> None:
    import gc

    hf, ours = build(name)
    vocab = ours.config.vocab_size
    if which == "ours":
        del hf
    else:
        del ours
    gc.collect()
    idx = torch.randint(0, vocab, (1, 512), generator=torch.Generator().manual_seed(0))
    before = _rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    with torch.no_grad():
        if which == "ours":
            _, cache = ours.run_with_cache(idx)
            held = sum(t.numel() * t.element_size() for t in cache.values())
        else:
            out = hf(idx, output_attentions=True)
            held = sum(a.numel() * a.element_size() for a in out.attentions)
    print(json.dumps({"extra_peak_mib": round(_rss_mib("VmHWM") - before, 1), "held_mib": round(held / 2**20, 1)}))


def peak_memory(name: str) -> None:
    res = {}
    for which in ("ours", "transformers"):
        out = subprocess.run([sys.executable, __file__, "--peak-child", name, which], capture_output=True,
                             text=True, check=True)
        res[which] = json.loads(out.stdout.strip().splitlines()[-1])
    emit("peak_memory", model=name, T=512, ours_capture="all hooks", transformers_capture="output_attentions",
         ours_extra_peak_mib=res["ours"]["extra_peak_mib"], ours_cache_mib=res["ours"]["held_mib"],
         transformers_extra_peak_mib=res["transformers"]["extra_peak_mib"],
         transformers_attentions_mib=res["transformers"]["held_mib"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--peak-child", nargs=2, metavar=("MODEL", "WHICH"))
    args = ap.parse_args()
    if args.peak_child:
        _peak_child(*args.peak_child)
        return
    import transformers

    emit("env", torch=torch.__version__, transformers=transformers.__version__, threads=torch.get_num_threads(),
         machine=platform.machine(), python=platform.python_version(), cores=os.cpu_count(),
         loadavg_1m=round(os.getloadavg()[0], 2))
    for name in args.models.split(","):
        bench_model(name, args.repeats)
        peak_memory(name)


if __name__ == "__main__":
    main()
