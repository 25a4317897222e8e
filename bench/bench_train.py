"""Training benchmarks on Tiny Shakespeare (DESIGN §5). Prints JSON lines.

    .venv/bin/python bench/bench_train.py [--only ratio,thread,nanogpt,quick,layouts] [--presets nanogpt-cpu,llama-cpu]

One ``json.dumps`` per line, each with a ``"metric"`` key:

* ``trainer_vs_plain``: tokens/s of :class:`lm_core.train.Trainer` (hooks present, nothing
  captured, history rows with per-layer norms every 10 steps) ÷ a plain PyTorch loop of the
  same model in the same process (get batch, forward, cross-entropy, backward, clip, AdamW).
  Rounds alternate between the two so drifting machine load hits both alike. Target ≥ 1.0.
* ``thread_vs_foreground``: tokens/s of a Trainer in a background thread (as the app runs it)
  while the main thread plays a polling UI ÷ the same Trainer in the foreground (as the CLI
  runs it); plus the UI's latency for a small fixed job, idle vs during training. Target ≥ 0.9.
  ``--presets nanogpt-cpu,llama-cpu`` measures each preset's architecture (the Llama-style one:
  RMSNorm, rotary, SwiGLU, grouped-query attention) against its own plain loop.
* ``layouts``: ``nanogpt-cpu`` and ``llama-cpu`` (the same parameter count) each trained for the
  same wall clock (``--seconds``, default 120; the cosine follows the clock), same seed: final
  val loss and tokens/s side by side.
* ``nanogpt_cpu``: the ``nanogpt-cpu`` preset, 2000 steps: final val loss. Target ≤ 1.89.
* ``quick``: the ``quick`` preset, 60 s wall clock: final val loss. Goal ≤ 1.80.
* ``reference`` (not in the default set: ~3.5 min per seed): nanoGPT's CPU recipe trained twice
  per seed, by the ``nanogpt-cpu`` preset through :class:`Trainer` and by a separate,
  self-contained implementation of nanoGPT's model and training loop below (its own
  LayerNorm without bias, exact GELU, SDPA, nanoGPT's init, AdamW groups, warmup + cosine and
  global-RNG batches), both scored by one val estimator: 300 fixed batches of the last 10%.
  nanoGPT reports 1.88 from 20 random batches; the rows say how far one estimate of that kind
  (``reference_val_20_random``) can sit from the 300-batch figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from lm_core.corpora import load_corpus  # noqa: E402
from lm_core.model import GPT  # noqa: E402
from lm_core.presets import preset_configs  # noqa: E402
from lm_core.tokenizers import CharTokenizer  # noqa: E402
from lm_core.train import Trainer, available_cores  # noqa: E402

PARTS = ("ratio", "thread", "nanogpt", "quick", "reference", "layouts")
POLL_S = 1.0  # the app's live view refreshes once a second


def emit(metric: str, **fields) -> None:
    print(json.dumps({"metric": metric, **fields}), flush=True)


def _text() -> str:
    return load_corpus("tiny-shakespeare")  # the copy shipped in assets/data (or LM_LENS_TINY_SHAKESPEARE)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _trainer(text, tok, preset, **train_over) -> Trainer:
    mcfg, tcfg = preset_configs(preset, tok.vocab_size, train_overrides=train_over)
    torch.manual_seed(tcfg.seed)
    return Trainer(GPT(mcfg), tok, text, tcfg)


def bench_ratio(text, tok, rounds: int, steps: int, preset: str = "nanogpt-cpu") -> None:
    trainer = _trainer(text, tok, preset, max_steps=10**9, eval_interval=10**9, sample_tokens=0,
                       log_interval=10)
    threads = trainer.configure_threads()
    cfg, tc = trainer.model.config, trainer.config
    torch.manual_seed(tc.seed)
    plain = GPT(cfg)  # the same model class: hooks present, nothing captured
    data = trainer.train_split.ids
    opt = torch.optim.AdamW(plain.parameters(), lr=tc.learning_rate, betas=(tc.beta1, tc.beta2),
                            weight_decay=tc.weight_decay)
    B, T = tc.batch_size, cfg.block_size

    def plain_step():
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([data[i:i + T] for i in ix])           # (B, T)
        y = torch.stack([data[i + 1:i + 1 + T] for i in ix])   # (B, T)
        logits = plain(x)                                       # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), tc.grad_clip)
        opt.step()

    def timed(fn, n):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return n * B * T / (time.perf_counter() - t0)

    timed(trainer.step, 10), timed(plain_step, 10)  # warm up
    tr, pl, pairs = [], [], []
    for r in range(rounds):  # alternate which side goes first, so neither always follows the other
        first, second = (trainer.step, plain_step) if r % 2 == 0 else (plain_step, trainer.step)
        a, b = timed(first, steps), timed(second, steps)
        t_rate, p_rate = (a, b) if r % 2 == 0 else (b, a)
        tr.append(t_rate)
        pl.append(p_rate)
        pairs.append(t_rate / p_rate)
    ratio = statistics.median(pairs)
    emit("trainer_vs_plain", preset=preset, n_params=cfg.n_params, load_avg=_load(),
         trainer_tokens_per_s=round(statistics.median(tr)),
         plain_tokens_per_s=round(statistics.median(pl)), ratio=round(ratio, 3),
         ratio_of_best=round(max(tr) / max(pl), 3), rounds=rounds, steps_per_round=steps, threads=threads,
         target=1.0, ok=ratio >= 1.0)


def bench_thread(text, tok, rounds: int, steps: int) -> None:
    """A background thread (the app) vs the foreground (the CLI), in alternating chunks.

    Two identical trainers: one stepped in the main thread, one started in the background and
    paused between its chunks while the main thread plays the app's live view (each second: a
    ~15 ms Python/JSON job and a snapshot). Rates are wall-clock steps between logged rows, so everything
    the thread waits for counts. Pair ratios of adjacent chunks cancel drifting machine load.
    """

    def ui_job() -> float:  # what a Streamlit rerun does between polls: Python and JSON work
        t0 = time.perf_counter()
        json.dumps([{"x": i, "y": i * 0.5} for i in range(20_000)])
        return (time.perf_counter() - t0) * 1e3

    idle = sorted(ui_job() for _ in range(30))
    marks: dict[str, list[tuple[int, float]]] = {"fg": [], "bg": []}

    def make(key):
        t = _trainer(text, tok, "nanogpt-cpu", max_steps=10**9, eval_interval=10**9, sample_tokens=0,
                     log_interval=5)
        t.on_step.append(lambda row: marks[key].append((row["step"], time.perf_counter())))
        return t

    fg, bg = make("fg"), make("bg")
    fg.configure_threads()

    def rate(key, since):
        pts = [(s, t) for s, t in marks[key] if s > since]
        (s0, t0), (s1, t1) = pts[0], pts[-1]
        return (s1 - s0) * fg.config.batch_size * fg.model.config.block_size / (t1 - t0)

    busy, pairs, fg_rates, bg_rates = [], [], [], []
    bg.start()
    bg.pause(wait=True)
    for r in range(rounds + 1):
        start = fg.step_count
        for _ in range(steps):
            fg.step()
        start_bg = bg.step_count
        bg.resume()
        while bg.step_count < start_bg + steps:
            t0 = time.perf_counter()
            busy.append(ui_job())
            bg.snapshot(weights=False)  # what app/views/train.py polls, once a second (POLL_S)
            time.sleep(max(0.0, POLL_S - (time.perf_counter() - t0)))
        bg.pause(wait=True)
        if r == 0:
            continue  # warm-up round
        f, b = rate("fg", start), rate("bg", start_bg)
        fg_rates.append(f)
        bg_rates.append(b)
        pairs.append(b / f)
    bg.stop()
    busy.sort()
    ratio = statistics.median(pairs)
    emit("thread_vs_foreground", foreground_tokens_per_s=round(statistics.median(fg_rates)),
         thread_tokens_per_s=round(statistics.median(bg_rates)), ratio=round(ratio, 3),
         pair_ratios=[round(x, 3) for x in pairs], threads=torch.get_num_threads(), cores=available_cores(),
         ui_job_ms_idle_p50=round(idle[len(idle) // 2], 1),
         ui_job_ms_training_p50=round(busy[len(busy) // 2], 1),
         ui_job_ms_training_p95=round(busy[int(len(busy) * 0.95)], 1), target=0.9, ok=ratio >= 0.9)


def bench_preset(text, tok, preset: str, metric: str, target: float, **over) -> None:
    t = _trainer(text, tok, preset, sample_tokens=0, **over)
    t0 = time.perf_counter()
    status = t.run()
    wall = time.perf_counter() - t0
    h = t.history
    val = float(h["val_loss"].dropna().iloc[-1])
    emit(metric, val_loss=round(val, 4), steps=t.step_count, status=status, reason=t.reason,
         wall_s=round(wall, 1), train_s=round(t.elapsed_s, 1),
         tokens_per_s=round(float(h["tokens_per_s"].median())),
         effective_tokens_per_s=round(t.tokens_seen / max(t.elapsed_s, 1e-9)), threads=t.num_threads,
         load_avg=_load(), target=target, ok=val <= target)


def bench_layouts(text, tok, seconds: float) -> None:
    """GPT-2's layout and Llama's at the same parameter count, each for the same wall clock."""
    rows = []
    for preset in ("nanogpt-cpu", "llama-cpu"):
        t = _trainer(text, tok, preset, sample_tokens=0, max_steps=10**6, max_seconds=seconds, schedule="time",
                     eval_interval=10**6, checkpoint_interval=10**6)
        t.run()
        h = t.history
        val = float(h["val_loss"].dropna().iloc[-1])
        rows.append(val)
        emit("layout_same_wall_clock", preset=preset, n_params=t.model.config.n_params, val_loss=round(val, 4),
             steps=t.step_count, train_s=round(t.elapsed_s, 1), seconds=seconds,
             tokens_per_s=round(float(h["tokens_per_s"].median())), seed=t.config.seed, threads=t.num_threads,
             load_avg=_load())
    emit("layout_same_wall_clock_summary", llama_minus_gpt2=round(rows[1] - rows[0], 4),
         note="val loss (nats/char, 20 fixed val batches); < 0 means the Llama-style layout ends lower")


# -- an independent implementation of nanoGPT's CPU recipe, for the "reference" part ------------


class _RefLayerNorm(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))  # no bias, as nanoGPT's default bias=False

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class _RefBlock(torch.nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = _RefLayerNorm(d), _RefLayerNorm(d)
        self.c_attn, self.attn_proj = torch.nn.Linear(d, 3 * d, bias=False), torch.nn.Linear(d, d, bias=False)
        self.c_fc, self.mlp_proj = torch.nn.Linear(d, 4 * d, bias=False), torch.nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class _RefGPT(torch.nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int) -> None:
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, d), torch.nn.Embedding(block, d)
        self.blocks = torch.nn.ModuleList(_RefBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = _RefLayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.head.weight  # tied
        for m in self.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(m.weight, 0.0, 0.02)
        for name, p in self.named_parameters():
            if name.endswith(("attn_proj.weight", "mlp_proj.weight")):
                torch.nn.init.normal_(p, 0.0, 0.02 / (2 * n_layer) ** 0.5)

    def forward(self, idx):  # (B, T) -> logits (B, T, V)
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _val_estimate(model, val_ids, n: int = 300, batch: int = 12, block: int = 64) -> float:
    """Mean cross-entropy over ``n`` fixed batches of the val split: one estimator for both sides."""
    from lm_core.data import VAL_STREAM, get_batch

    model.eval()
    with torch.no_grad():
        losses = []
        for i in range(n):
            x, y = get_batch(val_ids, batch, block, 4242, VAL_STREAM, i)
            logits = model(x)
            losses.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)))
    return float(torch.stack(losses).mean())


def _reference_run(text, tok, seed: int) -> tuple[float, float]:
    """nanoGPT's loop, step for step: returns (val over 300 fixed batches, val over 20 random ones)."""
    import math

    from lm_core.data import split_text

    mcfg, tcfg = preset_configs("nanogpt-cpu", tok.vocab_size)
    train, val = split_text(text, tok, mcfg.block_size)
    torch.manual_seed(seed)
    model = _RefGPT(tok.vocab_size, mcfg.block_size, mcfg.n_layer, mcfg.n_head, mcfg.n_embd)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": tcfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=tcfg.learning_rate, betas=(tcfg.beta1, tcfg.beta2))
    B, T, W, S = tcfg.batch_size, mcfg.block_size, tcfg.warmup_steps, tcfg.max_steps

    def lr_at(it: int) -> float:
        if it < W:
            return tcfg.learning_rate * (it + 1) / (W + 1)
        r = (it - W) / (S - W)
        return tcfg.min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (tcfg.learning_rate - tcfg.min_lr)

    def batch(ids):
        ix = torch.randint(len(ids) - T, (B,))
        return torch.stack([ids[i:i + T] for i in ix]), torch.stack([ids[i + 1:i + 1 + T] for i in ix])

    model.train()
    for it in range(S):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = batch(train.ids)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
    model.eval()
    with torch.no_grad():  # nanoGPT's own estimate: 20 random batches
        rand = []
        for _ in range(20):
            x, y = batch(val.ids)
            rand.append(F.cross_entropy(model(x).view(-1, tok.vocab_size), y.view(-1)))
    return _val_estimate(model, val.ids), float(torch.stack(rand).mean())


def bench_reference(text, tok, seeds: list[int]) -> None:
    from lm_core.data import split_text

    gaps = []
    for seed in seeds:
        t = _trainer(text, tok, "nanogpt-cpu", sample_tokens=0, snapshots=0, seed=seed)
        t.run()
        _, val = split_text(text, tok, t.model.config.block_size)
        ours = _val_estimate(t.model, val.ids)
        ref, ref20 = _reference_run(text, tok, seed)
        gaps.append(ours - ref)
        emit("nanogpt_reference", seed=seed, trainer_val_300=round(ours, 4), reference_val_300=round(ref, 4),
             reference_val_20_random=round(ref20, 4), trainer_minus_reference=round(ours - ref, 4))
    emit("nanogpt_reference_summary", seeds=seeds, mean_trainer_minus_reference=round(statistics.mean(gaps), 4),
         note="same recipe, same machine, same 300-batch estimator; > 0 means the Trainer ends worse")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(p for p in PARTS if p != "reference"),
                    help=f"comma-separated parts to run: {', '.join(PARTS)}")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of the ratio part (median of pair ratios)")
    ap.add_argument("--steps", type=int, default=30, help="steps per side per round of the ratio part")
    ap.add_argument("--seeds", default="1337,1", help="seeds of the reference part (comma-separated)")
    ap.add_argument("--presets", default="nanogpt-cpu", help="presets of the ratio part (comma-separated)")
    ap.add_argument("--seconds", type=float, default=120.0, help="wall clock per preset of the layouts part")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        sys.exit(f"bench_train.py: unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    text = _text()
    tok = CharTokenizer.train(text)
    emit("environment", torch=torch.__version__, cores=available_cores(), machine=platform.machine(),
         load_avg=_load())
    if "ratio" in parts:
        for preset in args.presets.split(","):
            bench_ratio(text, tok, args.rounds, args.steps, preset.strip())
    if "thread" in parts:
        bench_thread(text, tok, rounds=6, steps=100)
    if "nanogpt" in parts:
        bench_preset(text, tok, "nanogpt-cpu", "nanogpt_cpu", 1.89)
    if "quick" in parts:
        bench_preset(text, tok, "quick", "quick", 1.80)
    if "layouts" in parts:
        bench_layouts(text, tok, args.seconds)
    if "reference" in parts:
        bench_reference(text, tok, [int(x) for x in args.seeds.split(",") if x.strip()])


if __name__ == "__main__":
    main()
