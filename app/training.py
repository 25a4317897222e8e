"""Background training owned by the server process, not by a browser tab.

:class:`TrainingRegistry` (one per server, made by ``resources.registry()``) holds the
:class:`TrainingJob` of every run started from the app, keyed by run id. A refresh or a second
tab finds the running job here and reattaches; a lock makes "Start training" atomic, so two
clicks, two tabs or two sessions never start two runs. The trainer's own thread does the work
and never touches Streamlit; pages poll :meth:`TrainingJob.poll`. When every tab is closed the
run still ends by itself at its budget (``max_steps`` or ``max_seconds``), writing its run folder.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lm_core
from lm_core.train import TrainSnapshot, Trainer

from .models import LoadedModel, head_scores_frame

ACTIVE = ("idle", "running", "paused")
MAX_KEPT_JOBS = 3           # finished jobs kept in memory; their run folders stay on disk


class AlreadyTraining(ValueError):
    """A run is already training on this server."""


@dataclass
class TrainingJob:
    run_id: str
    run_dir: Path
    trainer: Trainer
    tokenizer: Any
    corpus_name: str
    started: float = field(default_factory=time.time)
    last_poll: float = field(default_factory=time.time)

    @property
    def status(self) -> str:
        return self.trainer.status

    @property
    def active(self) -> bool:
        return self.trainer.status in ACTIVE

    @property
    def model_config(self) -> lm_core.ModelConfig:
        return self.trainer.model.config

    @property
    def train_config(self) -> lm_core.TrainConfig:
        return self.trainer.config

    def poll(self, weights: bool = False) -> TrainSnapshot:
        """A consistent snapshot (history, latest metrics, samples; weights when asked)."""
        self.last_poll = time.time()
        return self.trainer.snapshot(weights=weights)

    def label(self) -> str:
        return f"{self.run_id} ({self.status})"


class TrainingRegistry:
    """Process-wide table of training jobs; at most one trains at a time on this server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, TrainingJob] = {}

    # -- reading (lock-free: a dict copy is atomic under the GIL) ---------------------------

    def jobs(self) -> list[TrainingJob]:
        """All jobs kept, oldest first."""
        return list(self._jobs.values())

    def get(self, run_id: str) -> TrainingJob | None:
        return self._jobs.get(run_id)

    def active_job(self) -> TrainingJob | None:
        """The job that is running or paused, if any."""
        for job in self.jobs():
            if job.active:
                return job
        return None

    def latest(self) -> TrainingJob | None:
        jobs = self.jobs()
        return jobs[-1] if jobs else None

    # -- starting and stopping --------------------------------------------------------------

    def start(self, run_id: str, make: Callable[[], TrainingJob]) -> TrainingJob:
        """Build a job with ``make`` and start it, atomically.

        Raises :class:`AlreadyTraining` when a job is running or paused (stop it first), and
        whatever ``make`` raises (``ValueError`` for settings that do not fit).
        """
        with self._lock:
            busy = self.active_job()
            if busy is not None:
                raise AlreadyTraining(
                    f"Run '{busy.run_id}' is already {busy.status} on this server. Stop it before "
                    f"starting another (one run at a time keeps the machine responsive)."
                )
            if run_id in self._jobs:
                raise AlreadyTraining(f"Run '{run_id}' was already started; pick a new run name.")
            job = make()
            job.trainer.start()
            self._jobs[job.run_id] = job
            self._prune()
            return job

    def _prune(self) -> None:
        ended = [k for k, j in self._jobs.items() if not j.active]
        while len(self._jobs) > MAX_KEPT_JOBS and ended:
            del self._jobs[ended.pop(0)]

    def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every job (tests and shutdown)."""
        for job in self.jobs():
            if job.active:
                job.trainer.stop(wait=True, timeout=timeout)

    # -- the live model ----------------------------------------------------------------------

    def live_model(self, run_id: str) -> LoadedModel | None:
        """A copy of the job's current weights as a model to inspect (None if unknown)."""
        job = self.get(run_id)
        if job is None:
            return None
        snap = job.poll(weights=True)
        model = lm_core.GPT(job.model_config)
        model.load_weights(snap.state_dict)
        model.eval()
        return LoadedModel(
            key=f"live:{run_id}@{snap.step}", label=f"{run_id} · step {snap.step} (live)", kind="live",
            model=model, tokenizer=job.tokenizer, history=snap.history, path=job.run_dir,
            corpus=job.corpus_name, step=snap.step, samples=snap.samples,
            family=f"run:{job.run_dir.resolve()}", final_step=snap.step, head_scores=head_scores_frame(snap),
        )
