"""Shared test setup.

A test run must never change a tracked file (README screenshots are written only with
LM_LENS_SCREENSHOTS=1): the session fails if ``git status`` of tracked files differs afterwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
