"""Training under torchrun: DistributedDataParallel with 2 CPU processes (gloo)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from lm_core.corpora import load_corpus
from lm_core.runs import list_snapshot_steps, load_run, snapshot_steps

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_cpu_processes_train_one_run_folder(tmp_path):
    corpus = tmp_path / "docs.txt"
    corpus.write_text(load_corpus("builtin:python-docs")[:40_000], encoding="utf-8")
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lm_core", "train", "--corpus", str(corpus), "--n-layer", "1", "--n-head", "2",
         "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--max-steps", "30",
         "--eval-interval", "10", "--eval-iters", "2", "--log-interval", "5", "--checkpoint-interval", "10",
         "--sample-tokens", "8", "--device", "cpu", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # only rank 0 prints and writes
    lines = proc.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("step ")] == ["step 0", "step 10", "step 20", "step 30"]
    assert sum(ln.startswith("finished") for ln in lines) == 1
    run = load_run(out)
    assert run.status == "finished" and run.step == 30
    assert run.config.status["world_size"] == 2
    h = run.history
    assert h["step"].tolist() == [0, 5, 10, 15, 20, 25, 30]
    assert all(math.isfinite(v) for v in h["train_loss"].iloc[1:]) and all(math.isfinite(v) for v in h["val_loss"].dropna())
    assert h["tokens_seen"].iloc[-1] == 30 * 4 * 16 * 2              # both ranks' batches count
    assert list_snapshot_steps(out) == snapshot_steps(30)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
