"""Live control of a run: its status, the moves between statuses, pause/resume/stop, the worker.

:class:`Status` lists every status a run can be in, and :data:`TRANSITIONS` the only moves
between them; :class:`Control` makes each move under one lock and refuses any other
(``IllegalTransition``), so no code assigns a status string by hand. ::

    idle ──► running ◄──► paused          (start / pause / resume)
               │            │
               ▼            ▼
            stopping ──► stopped ──► running   (stop; a stopped run may continue)
               │
               └──► finished | diverged | failed   (ended for good)

Another process controls a run through its folder: :func:`request` writes
``<run_dir>/control.json`` (``{"action": "pause" | "resume" | "stop", "time": unix seconds}``)
atomically, and the training process's :class:`ControlWatcher` polls that file four times a
second from a small thread (a ``stat``: nothing is read unless it changed), so a request takes
effect between two steps, and a stop is acknowledged at once (status ``stopping``) even while
a long step runs. A request written before the training process started is not for it and is
ignored (the file left over from the previous session of a resumed run).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)


class Status(StrEnum):
    """What a run is doing. A ``str``: ``Status.RUNNING == "running"``."""

    IDLE = "idle"            # built, not started (or stepped by hand)
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"    # a stop was asked for: the step in progress, a last evaluation and a checkpoint
    STOPPED = "stopped"      # stopped by request; may be started again
    FINISHED = "finished"    # max_steps, max_seconds or early stopping
    DIVERGED = "diverged"    # the loss or the gradient norm became NaN or infinite
    FAILED = "failed"        # out of memory, a callback raised, or another error


_END = {Status.FINISHED, Status.DIVERGED, Status.FAILED}
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.IDLE: frozenset({Status.RUNNING, Status.STOPPED, *_END}),
    Status.RUNNING: frozenset({Status.PAUSED, Status.STOPPING, Status.STOPPED, *_END}),
    Status.PAUSED: frozenset({Status.RUNNING, Status.STOPPING, Status.STOPPED, *_END}),
    Status.STOPPING: frozenset({Status.STOPPED, *_END}),
    Status.STOPPED: frozenset({Status.RUNNING, *_END}),
    Status.FINISHED: frozenset(),
    Status.DIVERGED: frozenset(),
    Status.FAILED: frozenset(),
}
ACTIVE = frozenset({Status.IDLE, Status.RUNNING, Status.PAUSED, Status.STOPPING})  # a process is behind it
ENDED = frozenset(_END)                                                              # cannot train any more
ACTIONS = ("pause", "resume", "stop")


class IllegalTransition(ValueError):
    """A status change that :data:`TRANSITIONS` does not allow."""


class Control:
    """The status of one trainer and the flags its training loop obeys.

    Thread-safe: the UI thread (or a :class:`ControlWatcher`) asks for pause/resume/stop while
    the worker trains. ``on_change(status)`` runs after every change of status, inside the lock
    (the trainer records it in status.json, so the file's order is the order of the changes).
    """

    def __init__(self, on_change: Callable[[Status], None] | None = None) -> None:
        self.lock = threading.RLock()
        self.on_change = on_change
        self._status = Status.IDLE
        self.error: str | None = None
        self.reason: str | None = None
        self.ended = False                      # the current run() has recorded its end
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._go = threading.Event()            # cleared while paused
        self._go.set()
        self._paused_ack = threading.Event()    # the worker is waiting, paused

    @property
    def status(self) -> Status:
        with self.lock:
            return self._status

    def to(self, new: Status | str, *, reason: str | None = None) -> None:
        """Move to ``new`` (``IllegalTransition`` if :data:`TRANSITIONS` does not allow it)."""
        new = Status(new)
        with self.lock:
            old = self._status
            if new != old and new not in TRANSITIONS[old]:
                raise IllegalTransition(f"a run cannot go from {old} to {new}; from {old} it may go to "
                                        f"{', '.join(sorted(TRANSITIONS[old])) or 'nothing (it has ended)'}")
            self._status = new
            if reason is not None:
                self.reason = reason
            if new != old and self.on_change is not None:
                self.on_change(new)

    # -- requests (any thread) ---------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def pause_requested(self) -> bool:
        return not self._go.is_set()

    def pause(self) -> bool:
        """Ask a running loop to pause after its step; False when it is not running."""
        with self.lock:
            if self._status != Status.RUNNING:
                return False
            self._go.clear()
            self.to(Status.PAUSED)
            return True

    def resume(self) -> None:
        with self.lock:
            if self._status == Status.PAUSED:
                self.to(Status.RUNNING)
            self._go.set()

    def stop(self) -> None:
        """Ask the loop to stop after its step; acknowledged at once as ``stopping``."""
        with self.lock:
            self._stop.set()
            self._go.set()
            if self._status in (Status.RUNNING, Status.PAUSED):
                self.to(Status.STOPPING)

    def wait_paused(self, poll_s: float = 0.05) -> None:
        """In the loop: wait while paused (until resumed or stopped)."""
        with self.lock:
            if self._status == Status.RUNNING:
                self.to(Status.PAUSED)
        self._paused_ack.set()
        while not self._go.wait(poll_s):
            if self._stop.is_set():
                break
        self._paused_ack.clear()
        with self.lock:
            if self._status == Status.PAUSED:
                self.to(Status.RUNNING)

    def wait_until_paused(self, timeout: float | None) -> None:
        self._paused_ack.wait(timeout)

    # -- the loop's life ----------------------------------------------------------------------

    def begin(self, step: int) -> None:
        """The loop starts (``run()``): refuses an ended run or a second live loop."""
        with self.lock:
            if self._status in ENDED:
                raise ValueError(f"the run has {self._status} at step {step}; start a new one")
            worker = self.thread
            if worker is not None and worker.is_alive() and worker is not threading.current_thread():
                raise ValueError("training is already running in the background; stop() it first")
            if self._status != Status.RUNNING:
                self.to(Status.RUNNING)
            self.error = None
            self.ended = False

    def start_worker(self, target: Callable[[], object], step: int) -> None:
        """Run ``target`` in a background thread (one at a time; not after the run ended)."""
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                raise ValueError("training is already running in the background; pause(), resume() or stop() it")
            if self._status in ENDED:
                raise ValueError(f"the run has {self._status} at step {step}; start a new one")
            self._stop.clear()
            self._go.set()
            self.to(Status.RUNNING)
            self.thread = threading.Thread(target=self._guard(target), name="lm_core-trainer", daemon=True)
            self.thread.start()

    def _guard(self, target: Callable[[], object]) -> Callable[[], None]:
        def work() -> None:
            try:
                target()
            except Exception as e:  # run() records errors itself; this is a last resort
                log.exception("training thread crashed")
                with self.lock:
                    self.error = f"{type(e).__name__}: {e}"
                    if self._status not in ENDED:
                        self.to(Status.FAILED, reason="failed")
        return work

    def join(self, timeout: float | None = None) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def is_background_running(self) -> bool:
        with self.lock:
            return (self._status == Status.RUNNING and self.thread is not None
                    and self.thread.is_alive())


# ----------------------------------------------------------------------------- control.json

# When this training process was launched: requests older than that are a previous session's.
# A launcher sets LM_LENS_LAUNCHED_AT (unix seconds) so a request written while the process was
# still importing (a Stop clicked at once) counts; otherwise lm_core's import time stands in.
LAUNCHED_AT_ENV = "LM_LENS_LAUNCHED_AT"


def _launched_at() -> float:
    try:
        return min(time.time(), float(os.environ[LAUNCHED_AT_ENV]))
    except (KeyError, ValueError):
        return time.time()


_PROCESS_START = _launched_at()


def request(run_dir: str | os.PathLike[str], action: str) -> None:
    """Ask the process training ``run_dir`` to ``pause``, ``resume`` or ``stop``.

    Writes ``<run_dir>/control.json`` atomically; the trainer acts on it within about a
    quarter of a second (a stop shows at once as status ``stopping`` in status.json).
    """
    from .record import write_control

    if action not in ACTIONS:
        raise ValueError(f"unknown control action {action!r}; use one of {', '.join(ACTIONS)}")
    write_control(Path(run_dir), {"action": action, "time": time.time()})


class ControlWatcher:
    """Polls ``<run_dir>/control.json`` and hands each new action to ``apply``.

    ``poll()`` costs one ``stat`` (the file is read only when it changed) and does nothing if
    called again within ``interval_s``; ``start()`` polls from a daemon thread until ``close()``.
    """

    def __init__(self, run_dir: str | os.PathLike[str], apply: Callable[[str], None],
                 interval_s: float = 0.25) -> None:
        from lm_core.runs import CONTROL_FILE

        self.path = Path(run_dir) / CONTROL_FILE
        self.apply = apply
        self.interval_s = interval_s
        self._next = 0.0
        self._seen = self._stamp()
        if self._seen is not None and (self._read() or {}).get("time", 0.0) >= _PROCESS_START:
            self._seen = None  # written after this process started (by whoever launched it): act on it
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> dict | None:
        from lm_core.runs import read_json

        try:
            data = read_json(self.path, "control file")
        except ValueError as e:
            log.warning("ignoring %s", e)
            return None
        return data if isinstance(data, dict) else None

    def poll(self, force: bool = False) -> str | None:
        """Apply a request written since the last poll; returns its action, or None."""
        now = time.monotonic()
        if not force and now < self._next:
            return None
        self._next = now + self.interval_s
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return None
        self._seen = stamp
        action = (self._read() or {}).get("action")
        if action not in ACTIONS:
            log.warning("ignoring %s: action %r is not one of %s", self.path, action, ", ".join(ACTIONS))
            return None
        self.apply(action)
        return action

    def start(self) -> ControlWatcher:
        def loop() -> None:
            while not self._closed.wait(self.interval_s):
                try:
                    self.poll(force=True)
                except Exception:  # a control request must never kill training
                    log.exception("control request failed")
        self._thread = threading.Thread(target=loop, name="lm_core-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
