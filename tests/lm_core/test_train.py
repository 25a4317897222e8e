"""Trainer: config validation, the optimisation maths, metrics, background control, failures."""

from __future__ import annotations

import math
import os
import socket
import threading
import time

import pandas as pd
import pytest
import torch

from lm_core import GPT, ModelConfig, TrainConfig
from lm_core.corpora import load_corpus
from lm_core.metrics import metric_names
from lm_core.runs import load_run
from lm_core.tokenizers import CharTokenizer
from lm_core.train import Trainer, layer_groups, resolve_device

torch.set_num_threads(1)

TEXT = load_corpus("builtin:python-docs")[:20_000]
TOK = CharTokenizer.train(TEXT)
TINY = ModelConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_trainer(run_dir=None, model_cfg: ModelConfig = TINY, *, on_step=None, on_end=None,
                 **train) -> Trainer:
    torch.manual_seed(0)
    defaults = dict(batch_size=4, max_steps=40, warmup_steps=5, eval_interval=20, eval_iters=2,
                    log_interval=10, checkpoint_interval=20, sample_tokens=8, num_threads=1)
    return Trainer(GPT(model_cfg), TOK, TEXT, TrainConfig(**{**defaults, **train}), run_dir,
                   corpus="builtin:python-docs", on_step=on_step, on_end=on_end)


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("changes, word", [
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"learning_rate": 1e-4, "min_lr": 1e-3}, "min_lr"),
    ({"eval_iters": 0}, "eval_iters"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"early_stopping_patience": 0}, "early_stopping_patience"),
    ({"device": "tpu"}, "device"),
    ({"schedule": "linear"}, "schedule"),
    ({"schedule": "time"}, "max_seconds"),
    ({"max_steps": 2.5}, "max_steps"),
    ({"num_threads": 0}, "num_threads"),
    ({"precision": "fp16"}, "precision"),
])
def test_invalid_train_config_raises_a_sentence_naming_the_field(changes, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**changes)


def test_trainer_refuses_mismatched_tokenizer_and_short_text():
    with pytest.raises(ValueError, match="vocab_size"):
        Trainer(GPT(TINY.replace(vocab_size=TOK.vocab_size + 1)), TOK, TEXT, TrainConfig())
    with pytest.raises(ValueError, match="block_size"):
        Trainer(GPT(TINY), TOK, TEXT[:100], TrainConfig())


def test_precision_auto_is_fp32_on_the_cpu_and_bf16_trains_under_autocast():
    from lm_core.train import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    fp32, bf16 = tiny_trainer(max_steps=20), tiny_trainer(max_steps=20, precision="bf16")
    assert fp32.amp_dtype is None and bf16.amp_dtype is torch.bfloat16
    assert fp32.run() == bf16.run() == "finished"
    a, b = fp32.history["val_loss"].dropna(), bf16.history["val_loss"].dropna()
    # bf16 rounds the matrix products (~3 significant digits), the weights stay fp32: close, not equal
    assert 0 < abs(a.iloc[-1] - b.iloc[-1]) < 0.05
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


# ----------------------------------------------------------------------------- maths

def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    t = tiny_trainer(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    lrs = [t.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))          # warmup rises
    assert lrs[10] == pytest.approx(1e-3)                               # peak after warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))            # then only falls
    assert t.lr_at(100) == pytest.approx(1e-4)                          # ends at min_lr
    mid = 10 + 45
    assert lrs[mid] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))        # cosine: halfway at midpoint


def test_weight_decay_applies_to_matrices_only_and_tied_weight_counts_once():
    t = tiny_trainer()
    decay, no_decay = t.optimizer.param_groups
    assert decay["weight_decay"] == t.config.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = len(decay["params"]) + len(no_decay["params"])
    assert n == len(list(t.model.parameters()))                         # lm_head is wte: one entry
    assert any(p is t.model.wte.weight for p in decay["params"])


def test_layer_groups_cover_every_parameter_once():
    m = GPT(TINY)
    groups = layer_groups(m)
    assert list(groups) == ["embed", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", "ln_final"]
    names = [n for ns in groups.values() for n in ns]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    assert "blocks.1.ln_1.weight" in groups["blocks.1.attn"] and "blocks.1.ln_2.bias" in groups["blocks.1.mlp"]


def test_training_logs_every_metric_and_lowers_the_loss():
    t = tiny_trainer(max_steps=60, learning_rate=3e-3)
    assert t.run() == "finished" and t.reason == "max_steps"
    h0 = t.history
    assert h0["step"].tolist() == [0, 10, 20, 30, 40, 50, 60]   # step 0: the untrained model, evaluated
    first = h0.iloc[0]
    assert first["val_loss"] == pytest.approx(math.log(TOK.vocab_size), abs=0.3) and first["tokens_seen"] == 0
    assert math.isnan(first["train_loss"]) and math.isnan(first["lr"])
    h = h0.iloc[1:].reset_index(drop=True)
    evals = h["val_loss"].notna()
    assert h.loc[evals, "step"].tolist() == [20, 40, 60]
    assert h["val_loss"].dropna().iloc[-1] < h["val_loss"].dropna().iloc[0] < math.log(TOK.vocab_size) + 0.2
    # characters: one token per character, so bits/char = nats/token / ln 2
    assert h["train_bpc"].tolist() == pytest.approx((h["train_loss"] / math.log(2)).tolist())
    assert h.loc[evals, "val_bpc"].tolist() == pytest.approx((h.loc[evals, "val_loss"] / math.log(2)).tolist())
    for col in ("lr", "grad_norm", "tokens_per_s", "elapsed_s", "tokens_seen"):
        assert (h[col] > 0).all(), col
    assert h0["elapsed_s"].is_monotonic_increasing and h["eta_s"].iloc[-1] == 0
    assert h["tokens_seen"].iloc[-1] == 60 * 4 * 16
    for g in layer_groups(t.model):
        assert (h[f"grad_norm/{g}"] > 0).all() and (h[f"update_ratio/{g}"] > 0).all(), g
    # group norms combine to the total norm (clipping happens after they are measured)
    groups = [c for c in h.columns if c.startswith("grad_norm/")]
    total = (h[groups] ** 2).sum(axis=1) ** 0.5
    assert total.tolist() == pytest.approx(h["grad_norm"].tolist(), rel=1e-4)
    assert [s["step"] for s in t.samples] == [0, 20, 40, 60] and all(len(s["text"]) == 8 for s in t.samples)


def test_update_ratio_is_the_relative_size_of_the_weight_change():
    t = tiny_trainer(max_steps=10, log_interval=10, eval_interval=10)
    for _ in range(9):
        t.step()
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    row = t.step()
    names = layer_groups(t.model)["blocks.0.mlp"]
    params = {n: p.detach() for n, p in t.model.named_parameters()}
    dw = sum(float((params[n] - before[n]).norm() ** 2) for n in names) ** 0.5
    w = sum(float(before[n].norm() ** 2) for n in names) ** 0.5
    assert row["update_ratio/blocks.0.mlp"] == pytest.approx(dw / w, rel=1e-5)


def test_same_seed_gives_identical_runs_with_dropout():
    cfg = TINY.replace(dropout=0.2)
    a, b = tiny_trainer(model_cfg=cfg), tiny_trainer(model_cfg=cfg)
    a.run()
    b.run()
    assert a.history["train_loss"].iloc[1:].tolist() == b.history["train_loss"].iloc[1:].tolist()
    c = tiny_trainer(model_cfg=cfg, seed=7)
    c.run()
    assert c.history["train_loss"].iloc[1:].tolist() != a.history["train_loss"].iloc[1:].tolist()


def test_callbacks_report_steps_evaluations_and_the_end():
    seen: dict[str, list] = {"step": [], "eval": [], "end": []}
    t = tiny_trainer()
    t.on_step.append(lambda r: seen["step"].append(r["step"]))
    t.on_eval.append(lambda r: seen["eval"].append((r["step"], r["val_loss"], r["sample"])))
    t.on_end.append(lambda s: seen["end"].append(s))
    t.run()
    assert seen["step"] == [0, 10, 20, 30, 40]
    assert [e[0] for e in seen["eval"]] == [0, 20, 40] and all(isinstance(e[2], str) for e in seen["eval"])
    assert seen["end"] == [{"status": "finished", "reason": "max_steps", "step": 40, "error": None}]


def test_a_failing_callback_fails_the_run_with_its_message():
    def boom(row):
        raise RuntimeError("no room on the chart")

    t = tiny_trainer(on_step=boom)
    assert t.run() == "failed"
    assert "on_step" in t.error and "no room on the chart" in t.error


# ----------------------------------------------------------------------------- stopping

def test_nan_loss_stops_the_run_as_diverged_and_keeps_the_last_checkpoint(tmp_path):
    t = tiny_trainer(tmp_path / "run", max_steps=40, checkpoint_interval=10)
    finite = t.model.state_dict_for_save()

    def poison(x, name):  # the 27th step's forward pass produces NaN
        return x * float("nan") if t.step_count == 26 else None

    t.model.hook_dict["hook_embed"].add(poison)
    assert t.run() == "diverged"
    t.model.hook_dict["hook_embed"].clear()
    assert t.step_count == 26 and "step 27" in t.error and "last finite loss" in t.error
    assert t.history["step"].tolist() == [0, 10, 20]
    run = load_run(tmp_path / "run")
    assert run.status == "diverged" and run.config.status["diverged_at"] == 27
    assert run.config.status["last_finite_loss"] == pytest.approx(t.last_finite_loss)
    assert run.step == 20                                   # the last good checkpoint
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values())
    assert all(torch.isfinite(v).all() for v in t.model.state_dict().values())  # no NaN update applied
    del finite
    with pytest.raises(ValueError, match="diverged"):
        t.step()


def test_step_by_hand_raises_on_divergence():
    t = tiny_trainer()
    t.model.hook_dict["hook_embed"].add(lambda x, n: x * float("inf"))
    with pytest.raises(ValueError, match="diverged"):
        t.step()
    assert t.status == "diverged"


def test_early_stopping_after_patience_evaluations_without_improvement(monkeypatch):
    t = tiny_trainer(max_steps=200, eval_interval=10, early_stopping_patience=2)
    vals = iter([3.5, 3.0, 2.9, 2.95, 2.91, 1.0, 1.0, 1.0])   # the first: step 0
    monkeypatch.setattr(t, "evaluate", lambda: {"val_loss": next(vals), "val_bpc": 1.0})
    assert t.run() == "finished" and t.reason == "early_stopping"
    assert t.step_count == 40 and t.best_step == 20


def test_max_seconds_ends_the_run_with_a_final_evaluation():
    t = tiny_trainer(max_steps=1_000_000, max_seconds=0.3, eval_interval=1_000_000, log_interval=7)
    t0 = time.perf_counter()
    assert t.run() == "finished" and t.reason == "max_seconds"
    assert time.perf_counter() - t0 < 5
    last = t.history.iloc[-1]
    assert last["step"] == t.step_count and not math.isnan(last["val_loss"])


def test_time_schedule_decays_over_the_budget():
    t = tiny_trainer(max_steps=1_000_000, max_seconds=10.0, schedule="time", warmup_steps=0)
    t.stepper.schedule_elapsed = 5.0
    assert t.lr_at(10) == pytest.approx(t.config.min_lr + 0.5 * (t.config.learning_rate - t.config.min_lr))
    t.stepper.schedule_elapsed = 10.0
    assert t.lr_at(11) == pytest.approx(t.config.min_lr)
    t.step()                                              # the first step also evaluates step 0
    t.elapsed_s = 7.5
    assert t.step()["lr"] == pytest.approx(t.lr_at(1))     # a step reads the elapsed time first
    assert t.stepper.schedule_elapsed == 7.5


def test_out_of_memory_fails_with_a_clear_message(monkeypatch):
    t = tiny_trainer()

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(t.model, "forward", oom)
    assert t.run() == "failed"
    assert "out of memory" in t.error and "batch_size" in t.error


def test_bits_per_character_account_for_bpe_tokens():
    from lm_core.tokenizers import BPETokenizer

    tok = BPETokenizer.train(TEXT, vocab_size=300)
    torch.manual_seed(0)
    t = Trainer(GPT(TINY.replace(vocab_size=tok.vocab_size)), tok, TEXT,
                TrainConfig(batch_size=4, max_steps=20, eval_interval=20, eval_iters=2, sample_tokens=4, num_threads=1))
    t.run()
    tpc = t.train_split.tokens_per_char
    assert 0.2 < tpc < 0.9                       # merges: fewer tokens than characters
    row = t.history.iloc[-1]
    assert row["train_bpc"] == pytest.approx(row["train_loss"] / math.log(2) * tpc)
    assert row["val_bpc"] == pytest.approx(row["val_loss"] / math.log(2) * t.val_split.tokens_per_char)


def test_device_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"


def test_thread_count_is_chosen_deliberately():
    from lm_core.train import available_cores

    try:
        assert tiny_trainer(num_threads=1).configure_threads() == 1 == torch.get_num_threads()
        assert tiny_trainer(num_threads=None).configure_threads() == available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(1)


def test_device_auto_and_unavailable_devices():
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------- background

def _wait(cond, timeout=20.0):
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.005)


def test_background_start_pause_resume_stop():
    t = tiny_trainer(max_steps=100_000, eval_interval=1000, log_interval=5, sample_tokens=0)
    t0 = time.perf_counter()
    t.start()
    assert time.perf_counter() - t0 < 0.5 and t.status == "running"
    with pytest.raises(ValueError, match="already running"):
        t.start()                                     # one trainer, one loop
    with pytest.raises(ValueError, match="pause"):
        t.step()
    _wait(lambda: t.step_count >= 10)
    t.pause(wait=True)
    assert t.status == "paused"
    paused_at = t.step_count
    time.sleep(0.1)
    assert t.step_count == paused_at
    t.step()                                          # stepping by hand while paused is allowed
    assert t.step_count == paused_at + 1
    t.resume()
    _wait(lambda: t.step_count >= paused_at + 10)
    t.stop()
    t.stop()                                          # idempotent
    assert t.status == "stopped" and t.reason == "stopped"
    steps = t.history["step"].tolist()
    assert steps == sorted(set(steps)) and steps[-1] == t.step_count
    assert not math.isnan(t.history["val_loss"].iloc[-1])  # a final evaluation at the stop
    at = t.step_count
    t.start()                                         # a stopped run continues
    _wait(lambda: t.step_count > at + 5)
    t.stop()
    assert t.status == "stopped"


def test_background_run_ends_by_itself_and_calls_on_end():
    ended = threading.Event()
    t = tiny_trainer(on_end=lambda s: ended.set())
    t.start()
    assert ended.wait(30) and t.join(5) == "finished" and t.step_count == 40
    with pytest.raises(ValueError, match="finished"):
        t.start()


def test_snapshot_weights_are_consistent_with_their_step():
    """Weights copied mid-run equal those of a by-hand rerun at the same step: never torn."""
    t = tiny_trainer(max_steps=100_000, eval_interval=100_000, log_interval=25, sample_tokens=0)
    snaps = []
    t.start()
    while len(snaps) < 60:
        s = t.snapshot()
        snaps.append((s.step, s.state_dict, len(s.history)))
        time.sleep(0.002)
    t.stop()
    assert len({s for s, _, _ in snaps}) >= 3
    # the copy is a copy
    sd0 = snaps[0][1]
    assert all(v.data_ptr() != p.data_ptr() for v, p in zip(sd0.values(), t.model.state_dict_for_save().values()))
    ref = tiny_trainer(max_steps=100_000, eval_interval=100_000, log_interval=25, sample_tokens=0)
    by_step = {}
    for s, sd, nrows in snaps:
        by_step.setdefault(s, (sd, nrows))
    for target in sorted(by_step):
        while ref.step_count < target:
            ref.step()
        sd, nrows = by_step[target]
        assert nrows <= target // 25 + 1
        for k, v in ref.model.state_dict_for_save().items():
            assert torch.equal(sd[k], v), (target, k)


def test_head_scores_recorded_at_each_evaluation_and_reloaded(tmp_path):
    """Circuits forming: probe head scores at every evaluation, in the snapshot and the run folder."""
    from lm_core.runs import HEAD_SCORE_COLUMNS

    text = load_corpus("synthetic:copy?n=300")
    tok = CharTokenizer.train(text)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    tc = TrainConfig(batch_size=4, max_steps=6, eval_interval=3, eval_iters=1, log_interval=1,
                             warmup_steps=0, sample_tokens=0, num_threads=1)
    tr = Trainer(GPT(cfg), tok, text, tc, run_dir=tmp_path / "run")
    tr.run()
    hs = tr.head_scores
    assert list(hs.columns) == HEAD_SCORE_COLUMNS
    assert sorted(hs["step"].unique()) == [0, 3, 6]
    assert set(hs["kind"]) == set(metric_names())  # every registered head metric
    assert len(hs) == 3 * len(metric_names()) * 2 * 2  # steps x kinds x layers x heads
    ind = hs[hs.kind == "induction"]["value"]
    assert ((ind >= 0) & (ind <= 1)).all()
    snap = tr.snapshot(weights=False)
    pd.testing.assert_frame_equal(snap.head_scores, hs)
    run = load_run(tmp_path / "run")
    pd.testing.assert_frame_equal(run.head_scores.reset_index(drop=True), hs.reset_index(drop=True))
    (tmp_path / "run" / "head_scores.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="head_scores.json"):
        load_run(tmp_path / "run")


# ----------------------------------------------------------------------------- live control

def test_status_transitions_live_in_one_table_and_illegal_moves_are_refused():
    from lm_core.train import ACTIVE, ENDED, TRANSITIONS, IllegalTransition, Status
    from lm_core.train.control import Control

    assert set(TRANSITIONS) == set(Status) and Status.RUNNING == "running"
    assert all(not TRANSITIONS[s] for s in ENDED) and Status.STOPPING in ACTIVE
    seen = []
    c = Control(on_change=seen.append)
    with pytest.raises(IllegalTransition, match="from idle to paused"):
        c.to(Status.PAUSED)
    c.to(Status.RUNNING)
    assert c.pause() and c.status == "paused"
    c.stop()                                          # acknowledged at once
    assert c.status == "stopping" and c.stop_requested
    with pytest.raises(IllegalTransition, match="stopping to running"):
        c.to(Status.RUNNING)
    c.to(Status.STOPPED, reason="stopped")
    c.to(Status.RUNNING)                              # a stopped run may continue
    c.to(Status.FINISHED)
    with pytest.raises(IllegalTransition, match="it has ended"):
        c.to(Status.RUNNING)
    assert seen == ["running", "paused", "stopping", "stopped", "running", "finished"]


def test_status_json_follows_every_change_and_every_row(tmp_path):
    from lm_core.runs import read_status

    d = tmp_path / "run"
    t = tiny_trainer(d, max_steps=40)
    assert read_status(d) is None                     # nothing written before training
    seen = []
    t.on_step.append(lambda row: seen.append((row["step"], read_status(d))))
    t.run()
    assert [s for s, _ in seen] == [0, 10, 20, 30, 40]
    for step, st in seen:
        assert st["status"] == "running" and st["step"] == step and st["max_steps"] == 40
        assert st["pid"] == os.getpid() and st["updated"] and isinstance(st["updated_unix"], float)
    assert seen[-2][1]["eta_s"] > 0 or seen[-2][1]["eta_s"] is not None
    st = read_status(d)
    assert st["status"] == "finished" and st["reason"] == "max_steps" and st["step"] == 40 and st["eta_s"] == 0
    (d / "status.json").write_text('{"status": "running", "pid": 999999999, "host": "%s"}' % socket.gethostname())
    assert read_status(d)["status"] == "interrupted"  # its process is gone: the run was killed
    (d / "status.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="status.json"):
        read_status(d)


def test_control_requests_pause_resume_and_stop_a_background_run(tmp_path):
    from lm_core.runs import read_status
    from lm_core.train import request

    d = tmp_path / "run"
    t = tiny_trainer(d, max_steps=100_000, eval_interval=1000, log_interval=5, sample_tokens=0)
    with pytest.raises(ValueError, match="unknown control action"):
        request(d, "faster")
    t.start()
    _wait(lambda: t.step_count >= 10)
    request(d, "pause")
    _wait(lambda: t.status == "paused" and read_status(d)["status"] == "paused")
    request(d, "resume")
    _wait(lambda: t.status == "running")
    at = t.step_count
    _wait(lambda: t.step_count > at)
    request(d, "stop")
    assert t.join(30) == "stopped" and t.reason == "stopped"
    assert read_status(d)["status"] == "stopped" and load_run(d).status == "stopped"


def test_a_first_sample_comes_early_without_waiting_for_an_evaluation(monkeypatch):
    import lm_core.train.loop as loop

    monkeypatch.setattr(loop, "EARLY_SAMPLE_S", 0.0)
    t = tiny_trainer(max_steps=30, eval_interval=1000)
    t.run()
    assert [s["step"] for s in t.samples] == [0, 1, 30]   # step 0, the early one, the last


def test_recipe_keeps_a_pasted_text_with_its_run_and_resumes_it(tmp_path):
    from lm_core.recipes import build_trainer

    d = tmp_path / "pasted"
    over = dict(batch_size=4, max_steps=20, eval_interval=10, eval_iters=1, num_threads=1, sample_tokens=0)
    model = dict(n_layer=1, n_head=2, n_embd=16, block_size=16)
    t = build_trainer(None, "char", model_overrides=model, train_overrides=over, run_dir=d, corpus_text=TEXT)
    assert (d / "corpus.txt").read_text(encoding="utf-8") == TEXT and t.corpus == str(d / "corpus.txt")
    t.run()
    again = build_trainer(None, "char", model_overrides=model, train_overrides={**over, "max_steps": 30},
                          run_dir=d, resume=True)
    assert again.step_count == 20 and again.run() == "finished" and again.step_count == 30
    with pytest.raises(ValueError, match=r"n_embd: 16 → 32"):
        build_trainer(None, "char", model_overrides={**model, "n_embd": 32}, run_dir=d, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        build_trainer(None, "char", model_overrides=model, train_overrides=over, run_dir=d, corpus_text=TEXT)
    with pytest.raises(ValueError, match="n_embd"):   # a refused new run leaves no folder behind
        build_trainer(None, "char", model_overrides={**model, "n_embd": 15}, run_dir=tmp_path / "bad",
                      corpus_text=TEXT)
    assert not (tmp_path / "bad").exists()


def test_writing_a_run_folder_builds_no_optimizer_and_the_run_then_resumes(tmp_path):
    """A process that only writes a run folder (the app, before its training process starts)
    never builds the optimizer, so it never pays torch's first-optimizer import of torch._dynamo;
    the folder's first checkpoint has no optimizer state, and resuming it trains."""
    import subprocess
    import sys

    run = tmp_path / "run"
    code = ("import sys; from lm_core.recipes import build_trainer; "
            f"build_trainer('synthetic:induction', 'char', run_dir={str(run)!r}, "
            "model_overrides=dict(n_layer=1, n_head=2, n_embd=16, block_size=16), "
            "train_overrides=dict(batch_size=4, max_steps=3, eval_interval=3, eval_iters=1)); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    t = Trainer.from_run(run)
    t.run()
    assert t.step_count == 3 and len(t.optimizer.state) > 0
