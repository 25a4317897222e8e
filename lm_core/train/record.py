"""What a run records, in memory and in its folder: history rows, samples, head scores,
checkpoints, snapshots, config.json and status.json.

:class:`Record` keeps the rows and probe results in memory (thread-safe: the UI reads them
while the worker appends). :class:`RunFolder` is the only code that writes a run folder (the
layout is :mod:`lm_core.runs`'s); every file goes through :func:`lm_core.atomic.atomic_write_bytes`
(temp file + rename), so a crash at any moment leaves the last good version of each file.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import runs as R
from ..atomic import atomic_write_bytes

BASE_COLUMNS = ["step", "train_loss", "val_loss", "train_bpc", "val_bpc", "lr", "grad_norm",
                "tokens_per_s", "elapsed_s", "eta_s", "tokens_seen"]
CORPUS_COPY = "corpus.txt"  # an uploaded or pasted text, kept with its run so the run can resume


def history_columns(groups: list[str]) -> list[str]:
    """The history's columns: the base ones, then ``grad_norm/<group>`` and ``update_ratio/<group>``."""
    return BASE_COLUMNS + [f"grad_norm/{g}" for g in groups] + [f"update_ratio/{g}" for g in groups]


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class Record:
    """History rows (and their CSV lines), samples and head-score records, by step.

    A value recorded again at the same step replaces the previous one (a final evaluation at a
    step that already had a row). ``lock`` guards everything; it is the trainer's lock.
    """

    def __init__(self, columns: list[str], lock) -> None:
        self.columns = columns
        self.lock = lock
        self.rows: list[dict[str, Any]] = []
        self.lines: list[str] = []                    # the rows as CSV lines, formatted once
        self.samples: list[dict[str, Any]] = []       # [{"step", "text"}]
        self.head_records: list[dict[str, Any]] = []  # [{"step", "scores": {kind: [[L x H]]}}]

    def add_row(self, row: dict[str, Any]) -> None:
        line = R.history_line(self.columns, row)  # formatted once: rewriting the file stays O(rows)
        with self.lock:
            if self.rows and self.rows[-1]["step"] == row["step"]:
                self.rows[-1], self.lines[-1] = row, line
            else:
                self.rows.append(row)
                self.lines.append(line)

    @staticmethod
    def _put(records: list[dict[str, Any]], rec: dict[str, Any]) -> None:
        if records and records[-1]["step"] == rec["step"]:
            records[-1] = rec
        else:
            records.append(rec)

    def add_sample(self, step: int, text: str) -> list[dict[str, Any]]:
        with self.lock:
            self._put(self.samples, {"step": step, "text": text})
            return list(self.samples)

    def add_head_scores(self, step: int, scores: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
        with self.lock:
            self._put(self.head_records, {"step": step, "scores": scores})
            return list(self.head_records)

    def latest(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.rows[-1]) if self.rows else {}

    def csv(self) -> str:
        with self.lock:
            return R.history_header(self.columns) + "".join(self.lines)

    def frame(self, rows: list[dict[str, Any]] | None = None) -> pd.DataFrame:
        if rows is None:
            with self.lock:
                rows = list(self.rows)
        df = pd.DataFrame(rows, columns=self.columns)
        df["step"] = df["step"].astype("int64")
        for c in self.columns[1:]:
            df[c] = df[c].astype("float64")
        return df

    def load(self, d: Path, upto: int) -> None:
        """Take the history, samples and head scores of the run in ``d`` up to step ``upto``
        (what its checkpoint had seen; whatever came after is dropped)."""
        hist = R.read_history(d / R.HISTORY_FILE)
        rows = []
        for rec in hist[hist["step"] <= upto].to_dict("records"):
            row = {c: rec.get(c, math.nan) for c in self.columns}
            row["step"] = int(rec["step"])
            rows.append(row)
        with self.lock:
            self.rows = rows
            self.lines = [R.history_line(self.columns, r) for r in rows]
            self.samples = [s for s in R.read_samples(d / R.SAMPLES_FILE) if s["step"] <= upto]
            self.head_records = [r for r in R.read_head_scores(d / R.HEAD_SCORES_FILE) if r["step"] <= upto]


class RunFolder:
    """Writes one run folder. Every method is a no-op off the main rank (DDP: rank 0 writes)."""

    def __init__(self, path: str | os.PathLike[str], is_main: bool = True) -> None:
        self.path = Path(path)
        self.is_main = is_main

    def holds_run(self) -> bool:
        return (self.path / R.CONFIG_FILE).exists()

    def create(self, tokenizer, record: Record) -> None:
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        tokenizer.save(self.path / R.TOKENIZER_FILE)  # atomic, normal file mode
        self.write_history(record)
        R.atomic_write_json(self.path / R.SAMPLES_FILE, [])

    def write_history(self, record: Record, fsync: bool = False) -> None:
        """history.csv, replaced atomically (a reader never sees a torn row); fsync at checkpoints."""
        if self.is_main:
            atomic_write_bytes(self.path / R.HISTORY_FILE, record.csv().encode("utf-8"), fsync=fsync)

    def write_samples(self, samples: list[dict[str, Any]]) -> None:
        if self.is_main:
            R.atomic_write_json(self.path / R.SAMPLES_FILE, samples, fsync=False)

    def write_head_scores(self, records: list[dict[str, Any]]) -> None:
        if self.is_main:
            R.atomic_write_json(self.path / R.HEAD_SCORES_FILE, records, fsync=False)

    def write_baselines(self, baselines: list[dict[str, Any]]) -> None:
        """baselines.json: the n-gram baselines of the run's text (see :func:`lm_core.runs.read_baselines`)."""
        if self.is_main:
            R.atomic_write_json(self.path / R.BASELINES_FILE, baselines, fsync=False)

    def save_snapshot(self, step: int, weights: dict[str, torch.Tensor]) -> None:
        if self.is_main:
            R.save_safetensors(R.snapshot_path(self.path, step), weights, {"step": str(step)})

    def save_best(self, step: int, val_loss: float, weights: dict[str, torch.Tensor]) -> None:
        if self.is_main:
            R.save_safetensors(self.path / R.BEST_FILE, weights, {"step": str(step), "val_loss": repr(val_loss)})

    def save_checkpoint(self, weights: dict[str, torch.Tensor], optimizer_state: dict[int, dict[str, Any]],
                        trainer_state: dict[str, Any], record: Record, config: R.RunConfig) -> None:
        """Resume state, weights, history and config (in that order), each atomically.

        resume.safetensors is one file (weights, optimizer tensors, trainer state as JSON
        metadata), so it is consistent by construction; model.safetensors may lag it by one
        checkpoint after a crash, which only matters for viewing.
        """
        if not self.is_main:
            return
        R.save_resume(self.path / R.RESUME_FILE, weights, optimizer_state, trainer_state)
        R.save_safetensors(self.path / R.MODEL_FILE, weights, {"step": str(trainer_state["step"])})
        self.write_history(record, fsync=True)
        self.write_config(config)

    def save_weights_only(self, step: int, weights: dict[str, torch.Tensor], record: Record,
                          config: R.RunConfig) -> None:
        """A slim finished folder (e.g. the shipped default model): weights, no optimizer state."""
        if not self.is_main:
            return
        R.save_safetensors(self.path / R.MODEL_FILE, weights, {"step": str(step)})
        self.write_history(record, fsync=True)
        self.write_config(config)
        (self.path / R.RESUME_FILE).unlink(missing_ok=True)

    def write_config(self, config: R.RunConfig) -> None:
        if self.is_main:
            R.atomic_write_json(self.path / R.CONFIG_FILE, config.to_dict())

    def write_status(self, status: str, step: int, max_steps: int, *, eta_s: float | None = None,
                     reason: str | None = None, error: str | None = None) -> None:
        """status.json: a small file another process polls (see :func:`lm_core.runs.read_status`)."""
        if not self.is_main or not self.path.is_dir():
            return
        now = time.time()
        obj = {"status": str(status), "step": step, "max_steps": max_steps, "eta_s": finite_or_none(eta_s),
               "reason": reason, "error": error, "pid": os.getpid(), "host": socket.gethostname(),
               "updated": R.now_iso(), "updated_unix": round(now, 3)}
        atomic_write_bytes(self.path / R.STATUS_FILE, (json.dumps(obj) + "\n").encode("utf-8"), fsync=False)

    def drop_after(self, step: int, best_step: int | None, record: Record) -> None:
        """Resuming at ``step``: remove snapshots and the best weights from after it, and rewrite
        history, samples and head scores as the checkpoint saw them."""
        if not self.is_main:
            return
        for sstep in R.list_snapshot_steps(self.path):
            if sstep > step:
                R.snapshot_path(self.path, sstep).unlink(missing_ok=True)
        best = self.path / R.BEST_FILE
        if best.exists() and (best_step is None or best_step > step):
            best.unlink()
        self.write_history(record, fsync=True)
        R.atomic_write_json(self.path / R.SAMPLES_FILE, record.samples)
        R.atomic_write_json(self.path / R.HEAD_SCORES_FILE, record.head_records)


def run_config(model_config, train_config, tokenizer_kind: str, corpus: str | None, corpus_sha256: str,
               created: str, status: dict[str, Any]) -> R.RunConfig:
    """config.json's content; a live status carries pid and host, so a reader can tell a
    running run from a killed one (:func:`lm_core.runs.effective_state`)."""
    st = {**status, "updated": R.now_iso()}
    if st.get("state") in ("idle", "running", "paused", "stopping"):
        st.update(pid=os.getpid(), host=socket.gethostname())
    return R.RunConfig(model=model_config, train=train_config, tokenizer_kind=tokenizer_kind,
                       corpus=corpus, corpus_sha256=corpus_sha256, created=created, status=st)


def save_corpus_copy(run_dir: str | os.PathLike[str], text: str) -> Path:
    """Keep a text that has no corpus spec (an upload, a paste) with its run: ``corpus.txt``."""
    path = Path(run_dir) / CORPUS_COPY
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def write_control(run_dir: Path, request: dict[str, Any]) -> None:
    """control.json: a request to the training process (see :func:`lm_core.train.control.request`)."""
    if not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} does not exist; nothing trains there")
    atomic_write_bytes(run_dir / R.CONTROL_FILE, (json.dumps(request) + "\n").encode("utf-8"), fsync=False)


def clear_run(run_dir: str | os.PathLike[str]) -> None:
    """Remove the files a run writes (and only those) from ``run_dir``: ``--overwrite``."""
    d = Path(run_dir)
    for name in (R.CONFIG_FILE, R.MODEL_FILE, R.TOKENIZER_FILE, R.HISTORY_FILE, R.SAMPLES_FILE,
                 R.HEAD_SCORES_FILE, R.RESUME_FILE, R.BEST_FILE, R.STATUS_FILE, R.CONTROL_FILE,
                 R.BASELINES_FILE):
        (d / name).unlink(missing_ok=True)
    for step in R.list_snapshot_steps(d):
        R.snapshot_path(d, step).unlink(missing_ok=True)
