"""Shared test setup: fixtures for a tiny model, a tiny run and the default model (helpers in
``support.py``), and one rule for the whole session.

A test run must never change a tracked file (README screenshots are written only with
LM_LENS_SCREENSHOTS=1): the session fails if ``git status`` of tracked files differs afterwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import make_tiny_model, make_tiny_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder trained for 30 steps (2 layers × 2 heads × 32), shared by the session."""
    return make_tiny_run(tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture
def tiny_model():
    """A 3-layer, 4-head, 32-wide GPT (vocabulary 23, context 12) with non-trivial norms and biases."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory) -> Path:
    """The shipped default model when it loads, else a tiny run standing in for it."""
    from lm_core import runs as lm_runs

    shipped = ROOT / "assets" / "default"
    try:
        lm_runs.load_run(shipped)
        return shipped
    except ValueError:
        return make_tiny_run(tmp_path_factory.mktemp("default") / "run")


def _tracked_changes() -> str | None:
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._lm_lens_tracked = _tracked_changes()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_lm_lens_tracked", None)
    if before is None or os.environ.get("LM_LENS_SCREENSHOTS") == "1":
        return
    after = _tracked_changes()
    if after is not None and after != before:
        changed = sorted(set(after.splitlines()) - set(before.splitlines()))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = f"the tests changed tracked files: {changed}"
        if reporter is not None:
            reporter.write_line(f"ERROR: {msg}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
