"""Training runs launched from the app, each in a process of its own.

Plain Python (no Streamlit). The Train page builds a run folder in the server (the one recipe,
:func:`lm_core.recipes.build_trainer`, so a bad setting is refused at once with a sentence),
then :meth:`TrainingRegistry.start` launches ``python -m lm_core train --out RUN --resume`` to
train it. Why a process and not a thread of the server: a training thread inside the server
shares the GIL with every session's page script (a small model's step is mostly Python), and
was measured at 0.4x the CLI's speed while a tab watched (issue "Live and shared"); a process of
its own does not, and with a live view that redraws little, keeps close to the CLI's speed
(``bench/bench_live.py``). It also outlives a server restart (the registry finds it again
through its ``status.json``), and a browser tab closing never stops it: it ends at its own
budget (``max_steps`` / ``max_seconds``).

The app talks to the process through the run folder only: ``control.json`` (pause, resume,
stop; :func:`lm_core.train.control.request`), ``status.json`` (:func:`lm_core.runs.read_status`),
``history.csv``, ``samples.json``, ``head_scores.json`` and the checkpoint weights. Reading those
is cheap and never blocks the process.

Fairness: at most one run trains at a time on a server (one run already uses the machine's
cores). Another person's *Start* is refused with who is training and when it ends. With
``LM_LENS_MULTI_USER=1`` (a server shared by a class) only the browser that started a run may
pause, resume or stop it; the local default is single-user: anyone may.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import lm_core
from lm_core import runs as lm_runs
from lm_core.train import TrainSnapshot
from lm_core.train.control import ACTIVE as LM_ACTIVE
from lm_core.train.control import LAUNCHED_AT_ENV
from lm_core.train.control import request as control_request

from .models import LoadedModel, recorded_head_scores

STARTING = "starting"        # the process is launched and has not reported yet
ACTIVE = frozenset({STARTING, *(str(s) for s in LM_ACTIVE)})
MAX_KEPT_JOBS = 3            # ended jobs kept in memory; their run folders stay on disk
LOG_FILE = "train.log"       # the training process's own output, in its run folder
MULTI_USER_ENV = "LM_LENS_MULTI_USER"
THREADS_ENV = "LM_LENS_TRAIN_THREADS"
_ROOT = Path(__file__).resolve().parents[2]


def multi_user() -> bool:
    """True when the server is shared (env ``LM_LENS_MULTI_USER=1``): runs are their owner's."""
    return os.environ.get(MULTI_USER_ENV, "").strip().lower() in ("1", "true", "yes")


def training_threads(cores: int | None = None) -> int:
    """CPU threads for a run launched from the app: env ``LM_LENS_TRAIN_THREADS``, else every
    core, as the CLI uses.

    Measured on 2 cores (``bench/bench_live.py``): the induction preset trains at 0.67x on one
    thread what it does on two, so leaving a core to the pages cannot reach the CLI's speed;
    what keeps training near the CLI's speed while a tab watches is a live view that costs little
    (progress every 2 s; the loss and one chart every 10 s; tabs share that budget) in a server
    that does not share training's process.
    On a machine busy with other work, OpenMP threads that lose their core stall each other, and
    ``LM_LENS_TRAIN_THREADS=1`` can then be faster.
    """
    env = os.environ.get(THREADS_ENV)
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={env!r} is not a whole number of threads") from None
        if n < 1:
            raise ValueError(f"{THREADS_ENV}={n} must be at least 1")
        return n
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


class AlreadyTraining(ValueError):
    """A run is already training on this server."""


class NotYours(PermissionError):
    """On a shared server, a run may be paused, resumed or stopped only by whoever started it."""


@dataclass
class _FileCache:
    """The last parse of a file, kept while its size and mtime stay the same."""

    stamp: tuple[int, int] | None = None
    value: Any = None


@dataclass
class TrainingJob:
    """One run and the process training it (None when found again after a server restart)."""

    run_id: str
    run_dir: Path
    tokenizer: Any
    corpus_name: str
    model_config: lm_core.ModelConfig
    train_config: lm_core.TrainConfig
    owner: str = ""
    proc: subprocess.Popen | None = None
    launched: float = field(default_factory=time.time)
    _files: dict[str, _FileCache] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _watchers: dict[str, float] = field(default_factory=dict, repr=False)

    # -- who is watching --------------------------------------------------------------------

    def watched_by(self, session: str, window_s: float, now: float | None = None) -> int:
        """Note that ``session`` (a browser tab) shows this run's live view now; return how many
        tabs did within the last ``window_s`` seconds (this one included). The tabs share one
        refresh budget: every redraw a browser makes takes CPU from the run on a small machine."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._watchers[session] = now
            for k in [k for k, t in self._watchers.items() if now - t > window_s]:
                del self._watchers[k]
            return len(self._watchers)

    # -- the process ------------------------------------------------------------------------

    def launch(self, threads: int) -> None:
        """Start ``python -m lm_core train --out RUN --resume`` for this run folder."""
        cmd = [sys.executable, "-m", "lm_core", "train", "--out", str(self.run_dir), "--resume", "--quiet",
               "--num-threads", str(threads)]
        self.launched = time.time()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
               LAUNCHED_AT_ENV: repr(self.launched)}  # a Stop clicked while it starts is for it
        log = open(self.run_dir / LOG_FILE, "ab")
        try:
            # a session of its own: Ctrl+C on the server's terminal does not reach it, so a run
            # outlives a server restart (it ends at its own budget; the registry finds it again)
            self.proc = subprocess.Popen(cmd, cwd=_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def _status_file(self) -> dict[str, Any]:
        try:
            return lm_runs.read_status(self.run_dir) or {}
        except ValueError as e:
            return {"status": "failed", "error": str(e)}

    def status_info(self) -> dict[str, Any]:
        """status.json as the process last wrote it, corrected by what the server knows: a
        process that has not reported since its launch is ``starting``; one that exited without
        saying why has ``failed`` (its log's last lines are the error)."""
        info = self._status_file()
        fresh = float(info.get("updated_unix") or 0.0) >= self.launched - 1.0
        exited = self.proc is not None and self.proc.poll() is not None
        if self.proc is not None and not exited and not fresh:
            return {**info, "status": STARTING}
        if exited and (not fresh or info.get("status") in ACTIVE):
            # exited without reporting an end: a crash before or while training
            code = self.proc.returncode
            return {**info, "status": "failed", "reason": "the training process exited",
                    "error": f"The training process exited with code {code}. {self.log_tail()}".strip()}
        return info

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = (self.run_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " ".join(t.strip() for t in text[-lines:])

    @property
    def status(self) -> str:
        return str(self.status_info().get("status", STARTING))

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def step_count(self) -> int:
        return int(self.status_info().get("step") or 0)

    def eta_s(self) -> float | None:
        eta = self.status_info().get("eta_s")
        return float(eta) if isinstance(eta, (int, float)) else None

    # -- control ----------------------------------------------------------------------------

    def may_control(self, who: str) -> bool:
        return not multi_user() or not self.owner or who == self.owner

    def _request(self, action: str, who: str) -> None:
        if not self.may_control(who):
            raise NotYours(f"Run '{self.run_id}' was started from another browser; on this shared server only "
                           f"whoever started it can {action} it.")
        control_request(self.run_dir, action)

    def pause(self, who: str = "") -> None:
        self._request("pause", who)

    def resume(self, who: str = "") -> None:
        self._request("resume", who)

    def stop(self, who: str = "") -> None:
        self._request("stop", who)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the run is no longer active (tests, shutdown); returns its status."""
        t0 = time.time()
        while self.active and (timeout is None or time.time() - t0 < timeout):
            time.sleep(0.1)
        return self.status

    # -- reading the run folder -------------------------------------------------------------

    def _cached(self, name: str, parse: Callable[[Path], Any], empty: Any) -> Any:
        path = self.run_dir / name
        try:
            st = path.stat()
        except OSError:
            return empty
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            c = self._files.setdefault(name, _FileCache())
            if c.stamp != stamp:
                try:
                    c.value, c.stamp = parse(path), stamp
                except ValueError:
                    if c.value is None:  # being replaced right now: keep the last good parse
                        return empty
            return c.value

    def history(self) -> pd.DataFrame:
        return self._cached(lm_runs.HISTORY_FILE, lm_runs.read_history, pd.DataFrame(columns=["step"]))

    def baselines(self) -> list[dict[str, Any]]:
        """The run's n-gram baselines (``baselines.json``, written before training starts; ``[]`` if none)."""
        return self._cached(lm_runs.BASELINES_FILE, lm_runs.read_baselines, [])

    def poll(self, weights: bool = False) -> TrainSnapshot:
        """What the run has written so far: history, latest metrics, samples, head scores, and
        (with ``weights``) the weights of its latest checkpoint."""
        info = self.status_info()
        hist = self.history()
        samples = self._cached(lm_runs.SAMPLES_FILE, lm_runs.read_samples, [])
        heads = self._cached(lm_runs.HEAD_SCORES_FILE,
                             lambda p: lm_runs.head_scores_frame(lm_runs.read_head_scores(p)), None)
        sd, step = None, int(info.get("step") or (int(hist["step"].iloc[-1]) if len(hist) else 0))
        if weights:
            sd, meta = lm_runs.read_safetensors(self.run_dir / lm_runs.MODEL_FILE)
            step = int(meta.get("step", step))
        metrics = hist.iloc[-1].to_dict() if len(hist) else {}
        if info.get("eta_s") is not None:
            metrics["eta_s"] = info["eta_s"]
        return TrainSnapshot(status=str(info.get("status", STARTING)), step=step, history=hist, metrics=metrics,
                             samples=list(samples or []), state_dict=sd, error=info.get("error"),
                             reason=info.get("reason"), head_scores=heads)

    def label(self) -> str:
        return f"{self.run_id} ({self.status})"

    @classmethod
    def reattach(cls, run_dir: Path) -> TrainingJob:
        """A job for a run some earlier server launched (no process handle: files only)."""
        cfg = lm_runs.load_run_config(run_dir)
        tok = lm_core.load_tokenizer(run_dir / lm_runs.TOKENIZER_FILE)
        status = lm_runs.read_status(run_dir) or {}
        return cls(run_id=run_dir.name, run_dir=run_dir, tokenizer=tok, corpus_name=cfg.corpus or run_dir.name,
                   model_config=cfg.model, train_config=cfg.train, owner=str(status.get("owner", "")),
                   launched=0.0)


class TrainingRegistry:
    """Process-wide table of training jobs; at most one trains at a time on this server."""

    def __init__(self, runs_root: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, TrainingJob] = {}
        self.runs_root = runs_root
        if runs_root is not None:
            self.discover(runs_root)

    # -- reading (a dict copy is atomic under the GIL) ---------------------------------------

    def jobs(self) -> list[TrainingJob]:
        """All jobs kept, oldest first."""
        return list(self._jobs.values())

    def get(self, run_id: str) -> TrainingJob | None:
        return self._jobs.get(run_id)

    def active_job(self) -> TrainingJob | None:
        for job in self.jobs():
            if job.active:
                return job
        return None

    def latest(self, owner: str | None = None) -> TrainingJob | None:
        """The newest job; on a shared server (``LM_LENS_MULTI_USER=1``) with ``owner`` given, the
        newest one that browser started (another person's finished run is theirs)."""
        jobs = self.jobs()
        if owner is not None and multi_user():
            jobs = [j for j in jobs if j.owner == owner]
        return jobs[-1] if jobs else None

    def forget_ended(self) -> None:
        """Drop ended jobs from memory (their run folders stay on disk and in the sidebar)."""
        with self._lock:
            for k in [k for k, j in self._jobs.items() if not j.active]:
                del self._jobs[k]

    def discover(self, root: Path) -> list[TrainingJob]:
        """Find runs still training under ``root`` (a server restarted while they ran)."""
        found = []
        if not root.is_dir():
            return found
        for d in sorted(root.iterdir()):
            if d.name in self._jobs or not (d / lm_runs.STATUS_FILE).is_file():
                continue
            try:
                status = (lm_runs.read_status(d) or {}).get("status")
                if status in ACTIVE:
                    job = TrainingJob.reattach(d)
                    self._jobs[job.run_id] = job
                    found.append(job)
            except (ValueError, OSError):
                continue
        return found

    # -- starting and stopping --------------------------------------------------------------

    def busy_message(self, job: TrainingJob, who: str = "") -> str:
        eta = job.eta_s()
        ends = f"; it ends in about {_minutes(eta)}" if eta is not None else ""
        by = "from this browser" if who and who == job.owner else "by another session"
        return (f"Run '{job.run_id}' is {job.status} on this server, started {by}{ends}. One run trains at a "
                f"time (it already uses the machine's cores); "
                + ("stop it first, or wait for it." if job.may_control(who) else "wait for it to end."))

    def start(self, run_id: str, make: Callable[[], TrainingJob], owner: str = "",
              threads: int | None = None) -> TrainingJob:
        """Build a job with ``make`` (which writes the run folder) and launch its process, atomically.

        Raises :class:`AlreadyTraining` when a run is active, and whatever ``make`` raises
        (``ValueError`` for settings that do not fit).
        """
        with self._lock:
            busy = self.active_job()
            if busy is not None:
                raise AlreadyTraining(self.busy_message(busy, owner))
            if run_id in self._jobs:
                raise AlreadyTraining(f"Run '{run_id}' was already started; pick a new run name.")
            job = make()
            job.owner = owner
            job.launch(threads or training_threads())
            self._jobs[job.run_id] = job
            self._prune()
            return job

    def _prune(self) -> None:
        ended = [k for k, j in self._jobs.items() if not j.active]
        while len(self._jobs) > MAX_KEPT_JOBS and ended:
            del self._jobs[ended.pop(0)]

    def stop_all(self, timeout: float = 60.0) -> None:
        """Stop every active job and wait for the processes (tests and shutdown)."""
        jobs = [j for j in self.jobs() if j.active]
        for job in jobs:
            control_request(job.run_dir, "stop")
        for job in jobs:
            job.wait(timeout)
            if job.proc is not None and job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait(10)

    # -- the live model ---------------------------------------------------------------------

    def live_model(self, run_id: str) -> LoadedModel | None:
        """The run's latest checkpoint as a model to inspect (None if unknown)."""
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
            family=f"run:{job.run_dir.resolve()}", final_step=snap.step, head_scores=recorded_head_scores(snap),
        )


def _minutes(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
