"""Training runs launched from the app, each in its own process (app/training.py), without AppTest:
control through the run folder, a Stop clicked while the process starts, fairness and ownership
on a shared server, and a registry that finds runs again after a server restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import lm_core

from app.core.jobs import (ACTIVE, AlreadyTraining, NotYours, TrainingJob, TrainingRegistry, training_threads)
from lm_core.recipes import build_trainer

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.0)


def _make(run_dir: Path, steps: int = 20000):
    def make() -> TrainingJob:
        tr = build_trainer("synthetic:copy?n=400", "char", model_overrides=TINY,
                           train_overrides=dict(batch_size=4, max_steps=steps, eval_interval=500, eval_iters=2,
                                                log_interval=10, checkpoint_interval=200, num_threads=1),
                           run_dir=run_dir)
        return TrainingJob(run_id=run_dir.name, run_dir=run_dir, tokenizer=tr.tokenizer, corpus_name="copy",
                           model_config=tr.model.config, train_config=tr.config)
    return make


def _wait(pred, timeout=60.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def registry(tmp_path):
    reg = TrainingRegistry(tmp_path)
    yield reg
    reg.stop_all(timeout=60)


def test_a_stop_clicked_while_the_process_starts_is_honoured(registry, tmp_path):
    job = registry.start("r1", _make(tmp_path / "r1"), threads=1)
    assert job.status in ACTIVE
    job.stop()  # before the process has imported anything
    assert job.wait(90) == "stopped"
    assert job.proc.wait(30) == 130  # the CLI's code for a stop by request


def test_pause_resume_and_the_live_view_read_the_run_folder(registry, tmp_path):
    job = registry.start("r2", _make(tmp_path / "r2"), threads=1)
    assert _wait(lambda: job.status == "running")
    assert _wait(lambda: len(job.history()) >= 3)
    job.pause()
    assert _wait(lambda: job.status == "paused", 15)
    n = job.step_count
    time.sleep(1.0)
    assert job.step_count == n  # paused means no step
    job.resume()
    assert _wait(lambda: job.status == "running" and job.step_count > n, 15)
    snap = job.poll(weights=True)
    assert snap.state_dict and snap.history["step"].is_monotonic_increasing and snap.status == "running"
    model = registry.live_model("r2")
    assert model is not None and model.step >= 0
    job.stop()
    assert job.wait(60) == "stopped"


def test_one_run_at_a_time_and_only_its_owner_controls_it_on_a_shared_server(registry, tmp_path, monkeypatch):
    job = registry.start("r3", _make(tmp_path / "r3"), owner="alice", threads=1)
    assert _wait(lambda: job.status == "running")
    with pytest.raises(AlreadyTraining, match=r"Run 'r3' is running on this server, started by another session"):
        registry.start("r4", lambda: pytest.fail("must not build a second run"), owner="bob")
    assert "from this browser" in registry.busy_message(job, "alice")
    monkeypatch.setenv("LM_LENS_MULTI_USER", "1")
    with pytest.raises(NotYours, match="only whoever started it"):
        job.stop("bob")
    assert job.status == "running"
    job.pause("alice")
    assert _wait(lambda: job.status == "paused", 15)
    monkeypatch.delenv("LM_LENS_MULTI_USER")
    job.stop("bob")  # single-user (the local default): anyone may
    assert job.wait(60) == "stopped"
    assert registry.latest(owner="bob") is job  # locally, the last run is everyone's
    monkeypatch.setenv("LM_LENS_MULTI_USER", "1")
    assert registry.latest(owner="bob") is None and registry.latest(owner="alice") is job  # shared: one's own


def test_a_restarted_server_finds_the_run_still_training(registry, tmp_path):
    job = registry.start("r5", _make(tmp_path / "r5"), threads=1)
    assert _wait(lambda: job.status == "running")
    again = TrainingRegistry(tmp_path)  # a new server process over the same runs folder
    found = again.get("r5")
    assert found is not None and found.proc is None and found.status == "running"
    assert found.model_config == job.model_config
    found.stop()  # through the run folder: no process handle needed
    assert job.wait(60) == "stopped"
    assert found.status == "stopped"


def test_a_process_that_dies_is_reported_failed_with_its_log(registry, tmp_path):
    job = registry.start("r6", _make(tmp_path / "r6"), threads=1)
    assert _wait(lambda: job.status == "running")
    job.proc.kill()
    job.proc.wait(10)
    info = job.status_info()
    assert info["status"] in ("failed", "interrupted")
    assert not job.active


def test_training_threads_are_every_core_unless_told(monkeypatch):
    monkeypatch.delenv("LM_LENS_TRAIN_THREADS", raising=False)
    assert training_threads(2) == 2 and training_threads(8) == 8 and training_threads(1) == 1  # as the CLI
    monkeypatch.setenv("LM_LENS_TRAIN_THREADS", "1")
    assert training_threads(2) == 1
    monkeypatch.setenv("LM_LENS_TRAIN_THREADS", "zero")
    with pytest.raises(ValueError, match="whole number"):
        training_threads()


def test_tabs_watching_a_run_are_counted_and_a_closed_one_expires(tmp_path):
    """The live view's refresh budget is shared by the tabs watching: each tab reports itself at
    every poll; one that stops polling drops out after the window."""
    import threading

    job = TrainingJob(run_id="r", run_dir=tmp_path, tokenizer=None, corpus_name="c",
                      model_config=lm_core.ModelConfig(), train_config=lm_core.TrainConfig())
    assert job.watched_by("tab-a", window_s=10, now=100.0) == 1
    assert job.watched_by("tab-a", window_s=10, now=101.0) == 1  # the same tab again
    assert job.watched_by("tab-b", window_s=10, now=102.0) == 2
    assert job.watched_by("tab-a", window_s=10, now=109.0) == 2
    assert job.watched_by("tab-a", window_s=10, now=113.0) == 1  # b last polled at 102: gone
    # many tabs at once (one server thread each): every one counted, none lost
    counts = []
    threads = [threading.Thread(target=lambda i=i: counts.append(job.watched_by(f"t{i}", window_s=1e9)))
               for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert max(counts) == 17 and job.watched_by("tab-a", window_s=1e9) == 17
