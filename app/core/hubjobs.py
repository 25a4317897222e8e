"""Downloads from the Hugging Face hub, and sweeps over a model's training checkpoints, running
in background threads while the pages stay usable. No Streamlit.

One :class:`HubJobs` registry serves the whole server (``resources.hub_jobs``). A job is keyed by
what it fetches (``("download", name, revision)``, ``("sweep", name, revisions)``): two sessions
asking for the same model share one download. Each session joins a job under its own id;
"Cancel" takes that session out, and the job stops only when no session is left waiting for it,
so one session never cancels another's download. Head scores of each checkpoint are kept in a
:class:`RevisionScores` store keyed by (model, revision), on disk under the cache folder for the
server: a sweep never scores one twice, also after a restart.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lm_core import hub
from lm_core.atomic import atomic_write_bytes
from lm_core.checkpoints import load_revision

from . import circuits

log = logging.getLogger(__name__)

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


@dataclass(frozen=True)
class JobView:
    """A consistent copy of a job's state for a page to draw."""

    key: tuple
    label: str
    status: str
    stage: str                   # what it does now, in words
    done_bytes: int
    total_bytes: int | None
    items_done: int              # checkpoints finished (sweeps) or files (downloads)
    items_total: int
    error: str | None

    @property
    def fraction(self) -> float | None:
        """Overall progress 0..1 (None while unknown)."""
        if self.status == DONE:
            return 1.0
        if self.items_total > 1:  # a sweep: whole checkpoints, plus the one arriving
            part = (self.done_bytes / self.total_bytes) if self.total_bytes else 0.0
            return min(1.0, (self.items_done + min(part, 1.0)) / self.items_total)
        if not self.total_bytes:
            return None
        return min(1.0, self.done_bytes / self.total_bytes)


class HubJob:
    """One background task: ``work(job)`` runs in a thread; it reports through :meth:`report`
    and :meth:`stage` and checks :attr:`cancel` (an Event)."""

    def __init__(self, key: tuple, label: str, work: Callable[["HubJob"], Any], items_total: int = 1):
        self.key, self.label = key, label
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._status, self._stage, self._error = RUNNING, "starting", None
        self._done_bytes, self._total_bytes = 0, None
        self._items_done, self._items_total = 0, int(items_total)
        self.result: Any = None
        self.members: set[str] = set()
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"hub-{label}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self, work) -> None:
        try:
            result = work(self)
        except hub.DownloadCancelled:
            self._end(CANCELLED, "cancelled")
        except Exception as e:  # a job must end with a sentence, never kill the server
            self._end(FAILED, str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
        else:
            self.result = result
            self._end(DONE, None)

    def _end(self, status: str, error: str | None) -> None:
        with self._lock:
            if self.cancel.is_set() and status == FAILED:
                status = CANCELLED  # an error while stopping is the stop
            self._status, self._error = status, error

    # -- called by the worker ----------------------------------------------------------------

    def report(self, p: hub.Progress) -> None:
        """A download's progress (``lm_core.hub.download``'s ``on_progress``)."""
        with self._lock:
            self._done_bytes, self._total_bytes = p.done_bytes, p.total_bytes
            if self._items_total == 1:
                self._stage = f"downloading {p.filename} ({p.files_done + 1} of {p.files_total} files)"

    def stage(self, text: str, items_done: int | None = None) -> None:
        with self._lock:
            self._stage = text
            if items_done is not None:
                self._items_done = items_done
                self._done_bytes, self._total_bytes = 0, None

    # -- read by the pages -------------------------------------------------------------------

    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    def view(self) -> JobView:
        with self._lock:
            return JobView(self.key, self.label, self._status, self._stage, self._done_bytes, self._total_bytes,
                           self._items_done, self._items_total, self._error)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


SCORES_FORMAT = 1  # bump when the probe or the metrics change: older files are then not read


class RevisionScores:
    """Head scores of hub checkpoints, keyed by (model name, revision): shared, bounded, thread-safe.

    With ``folder`` each checkpoint's scores are also kept on disk as JSON (one file per model
    and revision), so a server restart does not score a checkpoint again: a hub revision's
    weights never change. A file that cannot be read or written is only a cache miss.
    """

    def __init__(self, max_entries: int = 512, folder: Path | None = None):
        self._lock = threading.Lock()
        self._d: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
        self._max = max_entries
        self._folder = folder

    def _file(self, name: str, revision: str) -> Path | None:
        if self._folder is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]+", "--", f"{name}@{revision}")
        return self._folder / f"{safe}.json"

    def get(self, name: str, revision: str) -> dict[str, np.ndarray] | None:
        with self._lock:
            got = self._d.get((name, revision))
        if got is not None:
            return got
        path = self._file(name, revision)
        if path is None or not path.exists():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("format") != SCORES_FORMAT or d.get("name") != name or d.get("revision") != revision:
                return None
            scores = {k: np.asarray(v, dtype=np.float32) for k, v in d["scores"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("head scores in %s not read (%s); they will be computed again", path, e)
            return None
        self._remember(name, revision, scores)
        return scores

    def put(self, name: str, revision: str, scores: dict[str, np.ndarray]) -> None:
        self._remember(name, revision, scores)
        path = self._file(name, revision)
        if path is None:
            return
        doc = {"format": SCORES_FORMAT, "name": name, "revision": revision,
               "scores": {k: np.asarray(v, dtype=np.float32).tolist() for k, v in scores.items()}}
        try:
            atomic_write_bytes(path, json.dumps(doc).encode("utf-8"), fsync=False)
        except OSError as e:
            log.warning("head scores not kept on disk at %s (%s); they stay in memory", path, e)

    def _remember(self, name: str, revision: str, scores: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._d[(name, revision)] = scores
            self._d.move_to_end((name, revision))
            while len(self._d) > self._max:
                self._d.popitem(last=False)


def revision_step(revision: str) -> int:
    """``"step1000"`` -> 1000 (the revisions a sweep takes are step branches)."""
    if not revision.startswith("step") or not revision[4:].isdigit():
        raise ValueError(f"{revision!r} is not a training-step revision such as 'step1000'")
    return int(revision[4:])


def spread(revisions: Sequence[str], steps: Sequence[int], n: int = 8) -> list[str]:
    """At most ``n`` of ``revisions`` (in step order, ``steps`` theirs) spread evenly in log(step):
    the first and the last always, since circuits form early and settle late."""
    revisions = list(revisions)
    if len(revisions) <= n:
        return revisions
    logs = np.log1p(np.asarray(steps, dtype=np.float64))
    targets = np.linspace(logs[0], logs[-1], n)
    picked = sorted({int(np.abs(logs - t).argmin()) for t in targets})
    return [revisions[i] for i in picked]


def sweep_frame(name: str, revisions: Sequence[str], store: RevisionScores):
    """The long head-score frame (step, kind, layer, head, value) of the revisions already scored."""
    per = [(revision_step(r), s) for r in revisions if (s := store.get(name, r)) is not None]
    return circuits.long_frame(sorted(per, key=lambda x: x[0]))


class HubJobs:
    """The server's downloads and sweeps (see the module docstring). Thread-safe."""

    def __init__(self, max_kept: int = 32, scores_dir: Path | None = None):
        self._lock = threading.Lock()
        self._jobs: OrderedDict[tuple, HubJob] = OrderedDict()
        self._max_kept = max_kept
        self.scores = RevisionScores(folder=scores_dir)  # on disk too when scores_dir is given

    def _join(self, key: tuple, who: str, make: Callable[[], HubJob]) -> HubJob:
        with self._lock:
            job = self._jobs.get(key)
            if job is None or job.status in (FAILED, CANCELLED) or (job.status == RUNNING and job.cancel.is_set()):
                job = make()  # a stopping job ends at its next chunk; the hub's file locks keep the cache whole
                self._jobs[key] = job
                self._jobs.move_to_end(key)
                job.members.add(who)
                job.start()
                self._trim()
            else:
                job.members.add(who)
            return job

    def _trim(self) -> None:
        ended = [k for k, j in self._jobs.items() if j.status != RUNNING]
        while len(self._jobs) > self._max_kept and ended:
            self._jobs.pop(ended.pop(0), None)

    def download(self, name: str, revision: str | None, who: str) -> HubJob:
        """Start (or join) the download of ``name`` at ``revision`` into the Hugging Face cache."""
        key = ("download", name, revision)
        label = name + (f" @ {revision}" if revision else "")

        def work(job: HubJob):
            job.stage("asking the hub for the files")
            return hub.download(name, revision, on_progress=job.report, cancel=job.cancel)

        return self._join(key, who, lambda: HubJob(key, label, work))

    def sweep(self, name: str, revisions: Sequence[str], who: str) -> HubJob:
        """Start (or join) scoring every head of ``name`` at each of ``revisions`` (step branches):
        download each (cached), load it, score it on the fixed probe; kept in :attr:`scores`."""
        revisions = tuple(revisions)
        for r in revisions:
            revision_step(r)
        key = ("sweep", name, revisions)
        store = self.scores

        def work(job: HubJob):
            for i, rev in enumerate(revisions):
                if job.cancel.is_set():
                    raise hub.DownloadCancelled("cancelled")
                if store.get(name, rev) is not None:
                    continue
                job.stage(f"checkpoint {rev} ({i + 1} of {len(revisions)}): downloading", items_done=i)
                hub.download(name, rev, on_progress=job.report, cancel=job.cancel)
                job.stage(f"checkpoint {rev} ({i + 1} of {len(revisions)}): scoring the heads", items_done=i)
                model, tok = load_revision(name, rev)
                store.put(name, rev, circuits.probe_scores(model, tok))
                del model
            job.stage("done", items_done=len(revisions))
            return len(revisions)

        return self._join(key, who, lambda: HubJob(key, f"{name}: {len(revisions)} checkpoints", work,
                                                   items_total=max(1, len(revisions))))

    def get(self, key: tuple | None) -> HubJob | None:
        if key is None:
            return None
        with self._lock:
            return self._jobs.get(tuple(key))

    def leave(self, key: tuple, who: str) -> None:
        """``who`` no longer waits for the job (its Cancel button): the job stops when nobody does."""
        with self._lock:
            job = self._jobs.get(tuple(key))
            if job is None:
                return
            job.members.discard(who)
            if not job.members and job.status == RUNNING:
                job.cancel.set()

    def stop_all(self, timeout: float = 10) -> None:
        """Cancel every running job and wait for them (tests, shutdown)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.cancel.set()
        for j in jobs:
            j.join(timeout)
        with self._lock:
            self._jobs.clear()
