"""CUDA checks and figures for a machine with an NVIDIA GPU. Prints JSON lines.

    LM_LENS_TINY_SHAKESPEARE=path/to/tinyshakespeare.txt python bench/bench_gpu.py [--steps 5000]

One ``json.dumps`` per line, each with a ``"metric"`` key:

* ``device``: the GPU, torch and CUDA versions.
* ``cuda_matches_cpu``: one model's logits and every attention pattern on CUDA vs the CPU
  (fp32 and TF32 off: max absolute difference), and ``run_with_cache`` returning CPU tensors.
* ``analysis_cuda``: every ``lm_core.analysis`` function (head scores, probes, logit lens,
  ablation, the mechanics walkthrough) on a CUDA copy of a model vs the CPU one: max abs diff.
* ``kv_cache_cuda``: greedy generation on CUDA with the KV cache gives the same tokens as
  recomputing the whole window, with capture on; tokens/s of both.
* ``precision``: training tokens/s of the ``gpu`` preset's model with bf16 autocast ÷ fp32
  (TF32) in the same process.
* ``gpu_preset``: the ``gpu`` preset (6 × 6 × 384, block 256, dropout 0.2) for ``--steps``
  steps: final val loss (nanoGPT: about 1.47 at 5000 steps), wall time, tokens/s.

Exits with status 1 if a check fails; exits with a message when CUDA is not available.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from lm_core.config import ModelConfig  # noqa: E402
from lm_core.corpora import load_corpus  # noqa: E402
from lm_core.generate import generate  # noqa: E402
from lm_core.model import GPT  # noqa: E402
from lm_core.presets import preset_configs  # noqa: E402
from lm_core.tokenizers import CharTokenizer  # noqa: E402
from lm_core.train import Trainer  # noqa: E402

FAILED: list[str] = []


def emit(metric: str, **fields) -> None:
    print(json.dumps({"metric": metric, **fields}), flush=True)


def check(name: str, ok: bool) -> bool:
    if not ok:
        FAILED.append(name)
    return ok


def _cpu_and_cuda_copy() -> tuple[GPT, GPT]:
    """One small random model in eval mode, on the CPU and as a CUDA copy; TF32 off, so the two
    differ only by kernel rounding."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cpu = GPT(ModelConfig(vocab_size=65, n_layer=2, n_head=4, n_embd=64, block_size=64)).eval()
    gpu = GPT(cpu.config).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.to("cuda")


@torch.no_grad()
def bench_parity() -> None:
    cpu, gpu = _cpu_and_cuda_copy()
    x = torch.randint(0, 65, (2, 64))
    lc, cc = cpu.run_with_cache(x)
    lg, cg = gpu.run_with_cache(x.cuda())
    d_logits = float((lc - lg.float().cpu()).abs().max())
    d_pattern = max(float((cc[n] - cg[n]).abs().max()) for n in cc if n.endswith("hook_pattern"))
    on_cpu = all(t.device.type == "cpu" for t in cg.values())
    plain = gpu(x.cuda())  # the fused SDPA path
    d_fused = float((plain.float().cpu() - lc).abs().max())
    ok = check("cuda_matches_cpu", d_logits < 1e-4 and d_pattern < 1e-5 and d_fused < 1e-4 and on_cpu)
    emit("cuda_matches_cpu", max_abs_logits=d_logits, max_abs_pattern=d_pattern, max_abs_fused=d_fused,
         cache_on_cpu=on_cpu, ok=ok)


@torch.no_grad()
def bench_analysis() -> None:
    """lm_core.analysis on a CUDA model gives what it gives on the CPU (outputs come back on the CPU)."""
    from lm_core import analysis as A

    cpu, gpu = _cpu_and_cuda_copy()
    ids = torch.randint(0, 65, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    diffs: dict[str, float] = {}

    def close(name, a, b):
        a, b = torch.as_tensor(a).float().cpu(), torch.as_tensor(b).float().cpu()
        diffs[name] = float((a - b).abs().max()) if a.numel() else 0.0

    for k, v in A.all_head_scores(cpu, ids).items():
        close(f"all_head_scores.{k}", v, A.all_head_scores(gpu, ids)[k])
    close("induction_score", A.induction_score(cpu, seq_len=16, batch=2), A.induction_score(gpu, seq_len=16, batch=2))
    for k, v in A.probe_head_scores(cpu).items():
        close(f"probe_head_scores.{k}", v, A.probe_head_scores(gpu)[k])
    lc, lg = A.logit_lens(cpu, ids), A.logit_lens(gpu, ids)
    close("logit_lens.top_probs", lc.top_probs, lg.top_probs)
    close("logit_lens.true_next_prob", lc.true_next_prob, lg.true_next_prob)
    for mode in ("zero", "mean"):
        close(f"ablate_heads.{mode}", A.ablate_heads(cpu, ids, heads=[(0, 1), (1, 2)], mlp_layers=[0], mode=mode),
              A.ablate_heads(gpu, ids, heads=[(0, 1), (1, 2)], mlp_layers=[0], mode=mode))
    close("loss_on", A.loss_on(cpu, ids), A.loss_on(gpu, ids))
    ec, eg = A.head_ablation_effects(cpu, ids), A.head_ablation_effects(gpu, ids)
    close("head_ablation_effects", ec.select_dtypes("number").to_numpy(), eg.select_dtypes("number").to_numpy())
    wc, wg = A.attention_walkthrough(cpu, ids, 1, 2), A.attention_walkthrough(gpu, ids, 1, 2)
    for k, v in wc.items():
        if isinstance(v, torch.Tensor):
            close(f"attention_walkthrough.{k}", v, wg[k])
    worst = max(diffs.values())
    ok = check("analysis_cuda", worst < 1e-4)
    emit("analysis_cuda", checks=len(diffs), max_abs_diff=worst,
         worst=max(diffs, key=diffs.get), ok=ok)


def bench_kv(text: str, tok: CharTokenizer) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 both ways: near-ties must not flip a token
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=6, n_head=6, n_embd=384, block_size=256)).cuda()
    prompt = tok.encode(text[:64])
    out = {}
    for kv in (True, False):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        steps = list(generate(m, prompt, max_new_tokens=200, temperature=0.0, seed=0,
                              capture=["blocks.0.attn.hook_pattern"], use_kv_cache=kv))
        torch.cuda.synchronize()
        out[kv] = ([s.token_id for s in steps], 200 / (time.perf_counter() - t0))
    same = out[True][0] == out[False][0]
    check("kv_cache_cuda", same)
    emit("kv_cache_cuda", same_tokens=same, tokens_per_s_kv=round(out[True][1], 1),
         tokens_per_s_recompute=round(out[False][1], 1), ok=same)


def bench_precision(text: str, tok: CharTokenizer, steps: int = 60) -> None:
    rates = {}
    for precision in ("fp32", "bf16"):
        mcfg, tcfg = preset_configs("gpu", tok.vocab_size, train_overrides=dict(
            max_steps=10_000, eval_interval=10_000, sample_tokens=0, snapshots=0, device="cuda",
            precision=precision))
        torch.manual_seed(tcfg.seed)
        tr = Trainer(GPT(mcfg), tok, text, tcfg)
        for _ in range(10):  # warm-up: kernels, allocator
            tr.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.step()
        torch.cuda.synchronize()
        rates[precision] = steps * tcfg.batch_size * mcfg.block_size / (time.perf_counter() - t0)
        del tr
        torch.cuda.empty_cache()
    emit("precision", tokens_per_s_fp32=round(rates["fp32"]), tokens_per_s_bf16=round(rates["bf16"]),
         bf16_over_fp32=round(rates["bf16"] / rates["fp32"], 3))


def bench_preset(text: str, tok: CharTokenizer, steps: int) -> None:
    mcfg, tcfg = preset_configs("gpu", tok.vocab_size, train_overrides=dict(max_steps=steps, device="cuda"))
    torch.manual_seed(tcfg.seed)
    with tempfile.TemporaryDirectory() as d:
        progress = lambda row: emit("gpu_preset_eval", step=row["step"], val_loss=round(row["val_loss"], 4),  # noqa: E731
                                    tokens_per_s=round(row.get("tokens_per_s") or 0), elapsed_s=round(row["elapsed_s"], 1))
        tr = Trainer(GPT(mcfg), tok, text, tcfg, run_dir=Path(d) / "run", corpus="tiny-shakespeare",
                     on_eval=progress)
        t0 = time.perf_counter()
        state = tr.run()
        wall = time.perf_counter() - t0
        h = tr.history
        val = h["val_loss"].dropna()
        final = float(val.iloc[-1])
        check("gpu_preset_finished", state == "finished")
        emit("gpu_preset", steps=steps, state=state, final_val_loss=round(final, 4),
             best_val_loss=round(float(val.min()), 4), wall_s=round(wall, 1),
             tokens_per_s=round(steps * tcfg.batch_size * mcfg.block_size / wall),
             amp=str(tr.amp_dtype), device=str(tr.device),
             sample=tr.samples[-1]["text"][:160] if tr.samples else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5000, help="steps of the gpu preset (default 5000)")
    ap.add_argument("--only", default="parity,analysis,kv,precision,preset")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py: CUDA is not available on this machine")
    emit("device", gpu=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda)
    parts = set(args.only.split(","))
    text = load_corpus("tiny-shakespeare")
    tok = CharTokenizer.train(text)
    if "parity" in parts:
        bench_parity()
    if "analysis" in parts:
        bench_analysis()
    if "kv" in parts:
        bench_kv(text, tok)
    if "precision" in parts:
        bench_precision(text, tok)
    if "preset" in parts:
        bench_preset(text, tok, args.steps)
    emit("summary", failed=FAILED, ok=not FAILED)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
