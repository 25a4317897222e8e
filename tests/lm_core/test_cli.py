"""``python -m lm_core``: exact resume after SIGKILL, one-line errors, sampling, presets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lm_core import TrainConfig
from lm_core.cli import main
from lm_core.corpora import load_corpus
from lm_core.presets import PRESETS, preset_configs
from lm_core.runs import RESUME_FILE, load_run, read_safetensors

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "32", "--batch-size", "8",
         "--dropout", "0.1", "--eval-interval", "100", "--eval-iters", "2", "--log-interval", "10",
         "--checkpoint-interval", "50", "--sample-tokens", "16", "--num-threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("corpus") / "docs.txt"
    p.write_text(load_corpus("builtin:python-docs")[:60_000], encoding="utf-8")
    return str(p)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "lm_core", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _checkpoint_step(run_dir: Path) -> int:
    try:
        return int(read_safetensors(run_dir / RESUME_FILE)[1]["step"])
    except ValueError:
        return -1


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(corpus, tmp_path):
    common = ["train", "--corpus", corpus, *SMALL, "--max-steps", "400"]
    full = _cli(*common, "--out", str(tmp_path / "full"))
    killed = _cli(*common, "--out", str(tmp_path / "killed"))
    t0 = time.monotonic()
    while _checkpoint_step(tmp_path / "killed") < 100:        # a checkpoint past the first ones
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() - t0 < 120
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert load_run(tmp_path / "killed").status == "interrupted"   # config.json still says running
    assert 100 <= _checkpoint_step(tmp_path / "killed") < 400
    assert full.wait(timeout=180) == 0, full.communicate()

    resumed = _cli("train", "--out", str(tmp_path / "killed"), "--resume", "--quiet")
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    a, b = load_run(tmp_path / "full"), load_run(tmp_path / "killed")
    assert b.status == "finished" and b.step == 400
    assert b.history["step"].tolist() == [0, *range(10, 401, 10)] == a.history["step"].tolist()
    assert abs(b.history["train_loss"].iloc[-1] - a.history["train_loss"].iloc[-1]) < 1e-4
    assert abs(b.history["val_loss"].iloc[-1] - a.history["val_loss"].iloc[-1]) < 1e-4
    assert b.history["train_loss"].tolist() == pytest.approx(a.history["train_loss"].tolist(), abs=1e-4, nan_ok=True)
    assert b.snapshots == a.snapshots and b.samples == a.samples


def test_ctrl_c_stops_cleanly_with_a_checkpoint(corpus, tmp_path):
    out = tmp_path / "interrupted"
    proc = _cli("train", "--corpus", corpus, *SMALL, "--max-steps", "100000", "--out", str(out))
    t0 = time.monotonic()
    while _checkpoint_step(out) < 50:
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "stopping after this step" in err
    run = load_run(out)
    assert run.status == "stopped" and run.config.status["reason"] == "stopped"
    assert run.step == _checkpoint_step(out) == run.history["step"].iloc[-1] >= 50
    assert run.history["val_loss"].notna().iloc[-1]                # a final evaluation


def test_errors_are_one_line_without_traceback(corpus, tmp_path):
    bad = _cli("train", "--out", str(tmp_path / "x"), "--corpus", corpus, "--n-embd", "30", "--n-head", "4")
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "n_embd (30) must be divisible by n_head (4)" in err


@pytest.mark.parametrize("argv, code, words", [
    (["train", "--out", "X", "--n-layer", "two"], 2, "--n-layer"),
    (["train"], 2, "--out"),
    (["train", "--out", "X", "--preset", "huge"], 2, "huge"),
    (["fly"], 2, "fly"),
    (["train", "--out", "X", "--corpus", "nowhere/at/all.txt"], 1, "nowhere/at/all.txt"),
    (["train", "--out", "X", "--corpus", "{corpus}", "--lr", "-1"], 1, "learning_rate"),
    (["train", "--out", "X", "--corpus", "{corpus}", "--tokenizer", "char", "--vocab-size", "300"], 1, "bpe"),
    (["train", "--out", "X", "--resume"], 1, "X"),
    (["sample", "--run", "nowhere"], 1, "nowhere"),
])
def test_bad_arguments_exit_non_zero_with_one_line(argv, code, words, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([a.replace("{corpus}", corpus) for a in argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err


def test_train_resume_refusals_and_sample(corpus, tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--corpus", corpus, *SMALL, "--max-steps", "20", "--out", out]
    assert main(args) == 0
    assert "finished (max_steps) at step 20" in capsys.readouterr().out
    assert main(args) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", out, "--resume", "--n-layer", "3"]) == 1
    assert "n_layer: 2 → 3" in capsys.readouterr().err
    assert main(["train", "--out", out, "--resume", "--max-steps", "30", "--quiet"]) == 0
    assert load_run(out).step == 30
    assert main(args + ["--overwrite", "--no-optimizer-state"]) == 0
    capsys.readouterr()
    run = load_run(out)
    assert run.step == 20 and not (Path(out) / RESUME_FILE).exists()
    assert run.config.status["resumable"] is False
    assert main(["sample", "--run", out, "--prompt", "The ", "--max-new-tokens", "12", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The ") and len(text.rstrip("\n")) >= 4
    assert main(["sample", "--run", out, "--prompt", "The ", "--max-new-tokens", "12", "--seed", "3"]) == 0
    assert capsys.readouterr().out == text                         # seeded: the same text again


def test_resume_accepts_the_same_command_and_names_each_real_change(corpus, tmp_path, capsys):
    out = str(tmp_path / "run")
    first = ["train", "--corpus", corpus, *SMALL, "--max-steps", "20", "--out", out]
    assert main(first) == 0
    capsys.readouterr()
    # the same flags again, with --resume (and a longer run: max_steps may change)
    assert main([*first[:-4], "--max-steps", "30", "--out", out, "--resume"]) == 0
    assert "finished (max_steps) at step 30" in capsys.readouterr().out
    assert main([*first, "--resume"]) == 0                       # identical: nothing to do, nothing refused
    capsys.readouterr()
    changed = [a.replace("0.1", "0.2") if a == "0.1" else a for a in first]   # --dropout 0.1 -> 0.2
    assert main([*changed, "--batch-size", "4", "--tokenizer", "bpe", "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dropout: 0.1 → 0.2" in err and "batch_size: 8 → 4" in err
    assert "tokenizer: 'char' → 'bpe'" in err and "max_steps" not in err.split("only")[0]
    assert main(["train", "--out", out, "--resume", "--corpus", "builtin:python-docs"]) == 1
    assert f"corpus: {corpus!r} → 'builtin:python-docs'" in capsys.readouterr().err
    assert load_run(out).step == 30


def _wait_for(cond, proc, timeout=120.0):
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_control_file_pauses_resumes_and_stops_a_cli_run(corpus, tmp_path):
    from lm_core.runs import read_status
    from lm_core.train.control import request

    out = tmp_path / "ctl"
    proc = _cli("train", "--corpus", corpus, *SMALL, "--max-steps", "100000", "--batch-size", "64",
                "--out", str(out))
    _wait_for(lambda: (read_status(out) or {}).get("step", 0) >= 10, proc)
    st = read_status(out)
    assert st["status"] == "running" and st["max_steps"] == 100000 and st["pid"] == proc.pid
    assert isinstance(st["updated_unix"], float) and st["eta_s"] is None or st["eta_s"] >= 0
    request(out, "pause")
    _wait_for(lambda: read_status(out)["status"] == "paused", proc)
    paused_at = read_status(out)["step"]
    time.sleep(0.6)
    assert load_run(out).history["step"].iloc[-1] <= paused_at + 10    # at most the step in flight
    request(out, "resume")
    _wait_for(lambda: read_status(out)["status"] == "running", proc)
    request(out, "stop")
    _wait_for(lambda: read_status(out)["status"] in ("stopping", "stopped"), proc, timeout=5)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    st = read_status(out)
    assert st["status"] == "stopped" and st["reason"] == "stopped"
    run = load_run(out)
    assert run.status == "stopped" and run.step == st["step"] == run.history["step"].iloc[-1]
    # a later session of the same run ignores the stale request in control.json
    again = _cli("train", "--out", str(out), "--resume", "--max-steps", str(st["step"] + 20), "--quiet")
    assert again.wait(timeout=120) == 0, again.communicate()
    assert read_status(out)["status"] == "finished" and load_run(out).step == st["step"] + 20


def test_a_killed_run_reads_as_interrupted(corpus, tmp_path):
    from lm_core.runs import read_status

    out = tmp_path / "k"
    proc = _cli("train", "--corpus", corpus, *SMALL, "--max-steps", "100000", "--out", str(out))
    _wait_for(lambda: (read_status(out) or {}).get("step", 0) >= 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_status(out)["status"] == "interrupted"


def test_progress_lines_when_not_a_terminal(corpus, tmp_path, capsys):
    assert main(["train", "--corpus", corpus, *[a for a in SMALL if a != "--quiet"], "--max-steps", "100",
                 "--eval-interval", "50", "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("baseline val loss: unigram ") and "4-gram" in lines[0]
    assert lines[0].endswith("(nats/token)")
    lines = lines[1:]
    assert [ln.split(":")[0] for ln in lines[:3]] == ["step 0", "step 50", "step 100"]
    assert "val loss" in lines[0] and "train loss" not in lines[0]          # the untrained model
    assert "val loss" in lines[1] and "tok/s" in lines[1] and "ETA" in lines[1]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_valid_configs(name):
    model, train = preset_configs(name, vocab_size=66)
    assert isinstance(train, TrainConfig) and model.vocab_size == 66
    assert PRESETS[name].description


def test_preset_values_match_the_recipes():
    m, t = preset_configs("nanogpt-cpu", 66)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (t.batch_size, t.learning_rate, t.max_steps, t.warmup_steps, t.min_lr) == (12, 1e-3, 2000, 100, 1e-4)
    assert (t.eval_interval, t.eval_iters) == (250, 20)
    m, t = preset_configs("gpu", 66)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, t.batch_size) == (6, 6, 384, 256, 0.2, 64)
    m, t = preset_configs("quick", 66)
    assert t.max_seconds == 60 and t.schedule == "time"
    with pytest.raises(ValueError, match="unknown preset"):
        preset_configs("huge", 66)


# -- layout switches, baselines ---------------------------------------------------------------

LLAMA_FLAGS = ["--norm", "rmsnorm", "--pos", "rotary", "--rope-base", "500", "--mlp", "swiglu", "--d-mlp", "96",
               "--n-kv-head", "1", "--tie-embeddings", "false", "--bias", "false", "--qkv-bias", "true"]


def test_layout_flags_reach_the_config_and_resume_with_the_same_flags(corpus, tmp_path, capsys):
    out = tmp_path / "llama"
    common = ["train", "--corpus", corpus, *SMALL, *LLAMA_FLAGS, "--out", str(out)]
    assert main([*common, "--max-steps", "20"]) == 0
    m = load_run(out).config.model
    assert (m.norm, m.pos, m.rope_base, m.mlp, m.d_mlp, m.n_kv_head, m.tie_embeddings, m.bias, m.qkv_bias) == \
        ("rmsnorm", "rotary", 500.0, "swiglu", 96, 1, False, False, True)
    assert main([*common, "--max-steps", "30", "--resume"]) == 0          # the same flags: accepted
    assert load_run(out).step == 30
    assert main([*common[:-2], "--pos", "learned", "--out", str(out), "--max-steps", "40", "--resume"]) == 1
    assert "pos: 'rotary' → 'learned'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--norm", "batchnorm"], "argument --norm: invalid choice"),
    (["--n-kv-head", "3"], "n_kv_head (3) must divide n_head (2)"),
    (["--rotary-pct", "2"], "rotary_pct must be in"),
    (["--tie-embeddings", "maybe"], "expected true or false"),
    (["--norm", "rmsnorm", "--norm-bias", "true"], "RMSNorm has no bias"),
    (["--freeze", "the-middle"], "freeze must be"),
    (["--revision", "step1000"], "give --init-from too"),
])
def test_bad_layout_flags_are_one_line(corpus, tmp_path, capsys, flags, message):
    rc = main(["train", "--corpus", corpus, *SMALL, *flags, "--max-steps", "2", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_baselines_are_saved_and_quiet_prints_none(corpus, tmp_path, capsys):
    from lm_core.runs import read_baselines

    assert main(["train", "--corpus", corpus, *SMALL, "--max-steps", "2", "--out", str(tmp_path / "q")]) == 0
    assert "baseline val loss" not in capsys.readouterr().out            # --quiet
    run = load_run(tmp_path / "q")
    assert [b["n"] for b in run.baselines] == [1, 2, 3, 4] == [b["n"] for b in read_baselines(tmp_path / "q")]
    assert run.baselines[0]["val_loss"] > run.baselines[3]["val_loss"]   # a 4-gram beats a unigram


def test_llama_cpu_preset_matches_nanogpt_cpu_in_size_and_recipe():
    n, tn = preset_configs("nanogpt-cpu", 65)
    m, tm = preset_configs("llama-cpu", 65)
    assert (m.norm, m.pos, m.mlp, m.kv_heads, m.use_qkv_bias, m.use_mlp_bias) == ("rmsnorm", "rotary", "swiglu", 2,
                                                                                   False, False)
    assert abs(m.n_params - n.n_params) / n.n_params < 0.02
    assert tm == tn and (m.n_layer, m.n_head, m.n_embd, m.block_size) == (n.n_layer, n.n_head, n.n_embd, n.block_size)
    r, tr = preset_configs("induction-rotary", 30)
    i, ti = preset_configs("induction", 30)
    assert r.pos == "rotary" and r.replace(pos="learned") == i and tr == ti
