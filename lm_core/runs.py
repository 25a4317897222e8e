"""The run folder: everything a training run leaves on disk, and loading it back.

Layout (DESIGN §3)::

    config.json          model + training config, tokenizer kind, corpus spec, versions, status
    model.safetensors    weights at the last checkpoint (what load_run shows)
    tokenizer.json       the tokenizer (lm_core.tokenizers format)
    history.csv          one row per logged step (a first one at step 0 with the untrained val
                         loss), rewritten atomically after each row as training goes
    samples.json         a short generated sample at each evaluation
    head_scores.json     probe head scores (previous-token, duplicate-token, induction, entropy) at each evaluation
    resume.safetensors   weights + optimizer tensors + trainer state (JSON in the metadata),
                         one file, so a checkpoint is consistent by construction
    best.safetensors     weights at the best validation loss so far
    snapshots/step-000123.safetensors   weights at log-spaced steps (about 20), for time travel
    corpus.txt           the training text when it has no corpus spec (an upload or a paste)
    baselines.json       the text's n-gram baselines (unigram .. 4-gram val loss on the run's own
                         split; lm_core.ngram), for drawing beside the loss; read_baselines()
    status.json          the live status, small and rewritten at every change of status and every
                         history row: {"status", "step", "max_steps", "eta_s", "reason", "error",
                         "pid", "host", "updated", "updated_unix"}; read it with read_status()
    control.json         requests to the training process, written by another one:
                         {"action": "pause" | "resume" | "stop", "time": unix seconds}; write it
                         with lm_core.train.control.request() (polled 4x a second)

Every file is written atomically: a temp file in the same folder, fsync, ``os.replace``. A
crash at any moment leaves the previous version of each file. Nothing is ever unpickled:
weights are safetensors, everything else JSON or CSV, so a file planted in a run folder can
only fail to parse (with an error naming it), never run code.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from .atomic import atomic_write_bytes
from .config import ModelConfig, TrainConfig
from .model import GPT
from .tokenizers import Tokenizer, load_tokenizer


RUN_FORMAT = "lm-lens-run"
RUN_FORMAT_VERSION = 1
RESUME_FORMAT = "lm-lens-resume"

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
HISTORY_FILE = "history.csv"
SAMPLES_FILE = "samples.json"
HEAD_SCORES_FILE = "head_scores.json"
HEAD_SCORE_COLUMNS = ["step", "kind", "layer", "head", "value"]
RESUME_FILE = "resume.safetensors"
BEST_FILE = "best.safetensors"
STATUS_FILE = "status.json"
CONTROL_FILE = "control.json"
BASELINES_FILE = "baselines.json"  # n-gram baselines of the run's text (lm_core.ngram.baseline_losses)
SNAPSHOT_DIR = "snapshots"
MAX_SNAPSHOTS = 20

_SNAPSHOT_RE = re.compile(r"^step-(\d{6,})\.safetensors$")


def _lm_core_version() -> str:
    import lm_core  # late: lm_core/__init__ may import this module

    return str(getattr(lm_core, "__version__", "unknown"))


# ----------------------------------------------------------------------------- atomic writes

def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, fsync: bool = True) -> None:
    """JSON (UTF-8, indented) written with :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n")
                       .encode("utf-8"), fsync=fsync)


def save_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
    """Tensors (made contiguous, on CPU) to a safetensors file, atomically."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors_save(flat, metadata=metadata))


# ----------------------------------------------------------------------------- careful reads

def _unreadable(path: Path, what: str, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid {what} ({why}); the run folder is damaged or holds a "
                      f"foreign file: retrain, or restore the file from a backup")


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is missing; the run folder is incomplete (was the run killed "
                         f"before its first checkpoint?)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for every malformed header
        raise _unreadable(path, "safetensors file", f"{type(e).__name__}: {e}") from None
    return tensors, meta


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parsed JSON of ``path``; a missing, non-UTF-8 or malformed file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is missing; the run folder is incomplete")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _unreadable(path, what, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _unreadable(path, what, f"JSON error: {e}") from None


# ----------------------------------------------------------------------------- resume state

def save_resume(path: str | os.PathLike[str], weights: dict[str, torch.Tensor],
                optimizer_state: dict[int, dict[str, Any]], trainer_state: dict[str, Any]) -> None:
    """One safetensors file holding everything an exact resume needs.

    Tensors: ``model/<name>`` (weights) and ``optim/<param index>/<key>`` (e.g. AdamW's
    ``exp_avg``, ``exp_avg_sq``, ``step``); metadata: ``format``, ``step`` and ``state``, the
    trainer's counters as JSON (non-tensor optimizer values under ``optimizer_scalars``).
    ``trainer_state`` must hold ``step`` and ``n_params``. One file, so always consistent.
    """
    tensors = {f"model/{k}": v for k, v in weights.items()}
    scalars: dict[str, dict[str, Any]] = {}
    for pi, st in optimizer_state.items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim/{pi}/{key}"] = val
            else:
                scalars.setdefault(str(pi), {})[key] = val
    state = {**trainer_state, "optimizer_scalars": scalars}
    save_safetensors(path, tensors, {"format": RESUME_FORMAT, "step": str(trainer_state["step"]),
                                     "state": json.dumps(state)})


def load_resume(path: str | os.PathLike[str], n_params: int
                ) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, Any]], dict[str, Any]]:
    """``(weights, optimizer state by parameter index, trainer state)`` from :func:`save_resume`.

    Refuses (``ValueError`` naming the file) anything that is not such a file, or one written
    for a model with a different number of parameter tensors than ``n_params``.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != RESUME_FORMAT:
        raise ValueError(f"{path} is not an LM Lens resume checkpoint (its format is "
                         f"{meta.get('format')!r}); the run cannot be resumed")
    try:
        state = json.loads(meta["state"])
        int(state["step"])
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{path} has damaged trainer state in its metadata; the run cannot be resumed") from None
    if state.get("n_params") != n_params:
        raise ValueError(f"{path} holds optimizer state for {state.get('n_params')} parameters, the model has "
                         f"{n_params}; the file belongs to another run")
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optim: dict[int, dict[str, Any]] = {}
    try:
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, pi, key = k.split("/", 2)
                optim.setdefault(int(pi), {})[key] = v
        for pi, sc in state.get("optimizer_scalars", {}).items():
            optim.setdefault(int(pi), {}).update(sc)
    except (ValueError, AttributeError):
        raise _unreadable(path, "resume checkpoint", "malformed optimizer entries") from None
    if optim and (min(optim) < 0 or max(optim) >= n_params):
        raise ValueError(f"{path} holds optimizer state for parameter indices outside the model")
    return weights, optim, state


# ----------------------------------------------------------------------------- history CSV

def history_header(columns: list[str]) -> str:
    """The CSV header line of the history (with its newline)."""
    return ",".join(columns) + "\n"


def history_line(columns: list[str], row: dict[str, Any]) -> str:
    """One CSV line (with its newline); missing or NaN values are empty cells."""
    return ",".join(_cell(row.get(c)) for c in columns) + "\n"


def history_to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV text of the history rows (column names and numbers need no quoting)."""
    return history_header(columns) + "".join(history_line(columns, r) for r in rows)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return ""
    return repr(v)


def read_history(path: str | os.PathLike[str]) -> pd.DataFrame:
    """history.csv as a DataFrame (``step`` int, everything else float; empty cells NaN).

    The parser is strict: a header starting with ``step,train_loss``, the same number of cells
    in every row, numbers only. Anything else raises ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is missing; the run folder is incomplete")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _unreadable(path, "history CSV", "not UTF-8 text") from None
    if text and not text.endswith("\n"):
        raise _unreadable(path, "history CSV", "the file is truncated: its last line is incomplete")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0][:2] != ["step", "train_loss"]:
        raise _unreadable(path, "history CSV", "its header does not start with step,train_loss")
    header = rows[0]
    data: dict[str, list] = {c: [] for c in header}
    last_step = -1
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _unreadable(path, "history CSV", f"line {n} has {len(row)} cells, the header {len(header)}")
        try:
            step = int(row[0])
            vals = [float(x) if x != "" else math.nan for x in row[1:]]
        except ValueError:
            raise _unreadable(path, "history CSV", f"line {n} holds something that is not a number") from None
        if step <= last_step:
            raise _unreadable(path, "history CSV", f"line {n}: step {step} does not increase")
        last_step = step
        data["step"].append(step)
        for c, v in zip(header[1:], vals):
            data[c].append(v)
    df = pd.DataFrame({c: pd.Series(v, dtype="int64" if c == "step" else "float64")
                       for c, v in data.items()})
    return df


# ----------------------------------------------------------------------------- snapshots

def snapshot_steps(max_steps: int, count: int = MAX_SNAPSHOTS) -> list[int]:
    """Log-spaced steps at which weights are kept for time travel: 0, 1, 2, 3, 5, … max_steps.

    Exactly ``min(count, max_steps + 1)`` steps, crowded near the start, where the model
    changes fastest. ``count`` 0 gives none, 1 only ``max_steps``.
    """
    if count <= 1:
        return [max_steps] if count == 1 else []
    if max_steps + 1 <= count:
        return list(range(max_steps + 1))
    n = count - 1  # points on the geometric grid 1 .. max_steps (step 0 comes on top)
    steps = [0]
    for i in range(n):
        # strictly increasing; convexity of the grid keeps the last point at max_steps
        steps.append(max(steps[-1] + 1, round(max_steps ** (i / (n - 1))) if n > 1 else max_steps))
    return steps


def snapshot_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the snapshot of ``step`` lives: ``snapshots/step-000123.safetensors``."""
    return Path(run_dir) / SNAPSHOT_DIR / f"step-{step:06d}.safetensors"


def list_snapshot_steps(run_dir: str | os.PathLike[str]) -> list[int]:
    """Steps of the snapshot files in ``run_dir/snapshots`` (by name; nothing is read)."""
    d = Path(run_dir) / SNAPSHOT_DIR
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _SNAPSHOT_RE.match(p.name)))


# ----------------------------------------------------------------------------- config.json

@dataclass
class RunConfig:
    """What config.json holds: enough to rebuild the model without the training script."""

    model: ModelConfig
    train: TrainConfig
    tokenizer_kind: str
    corpus: str | None = None
    corpus_sha256: str | None = None  # of the training text: a resume must see the same text
    lm_core_version: str = ""
    created: str = ""
    status: dict[str, Any] = field(default_factory=dict)  # state, step, checkpoint_step, …

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "lm_core_version": self.lm_core_version or _lm_core_version(),
            "created": self.created,
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "tokenizer": {"kind": self.tokenizer_kind, "vocab_size": self.model.vocab_size},
            "corpus": self.corpus,
            "corpus_sha256": self.corpus_sha256,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = CONFIG_FILE) -> RunConfig:
        if not isinstance(d, dict) or d.get("format") != RUN_FORMAT:
            raise ValueError(f"{where} is not an LM Lens run config (no \"format\": \"{RUN_FORMAT}\"); "
                             f"point at a folder written by lm_core training")
        if d.get("format_version") != RUN_FORMAT_VERSION:
            raise ValueError(f"{where} has run format version {d.get('format_version')!r}; this "
                             f"lm_core reads version {RUN_FORMAT_VERSION}: upgrade lm_core or retrain")
        try:
            model = ModelConfig.from_dict(d["model"])
            train = TrainConfig.from_dict(d["train"])
            kind = d["tokenizer"]["kind"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where} lacks a required entry ({e}); the file is damaged") from None
        except ValueError as e:
            raise ValueError(f"{where} holds an invalid config: {e}") from None
        status = d.get("status") or {}
        if not isinstance(status, dict):
            raise ValueError(f"{where}: 'status' must be an object, got {type(status).__name__}")
        return cls(model=model, train=train, tokenizer_kind=str(kind), corpus=d.get("corpus"),
                   corpus_sha256=d.get("corpus_sha256"),
                   lm_core_version=str(d.get("lm_core_version", "")), created=str(d.get("created", "")),
                   status=status)


LIVE_STATES = ("idle", "running", "paused", "stopping")  # a process should be behind them


def effective_state(status: dict[str, Any]) -> str:
    """The run's state, with ``running``/``idle`` read as ``interrupted`` when the process that
    wrote it (same host, recorded pid) no longer exists: a killed run never updates its config."""
    state = str(status.get("state", "unknown"))
    pid, host = status.get("pid"), status.get("host")
    if state in LIVE_STATES and isinstance(pid, int) and host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "interrupted"
        except (PermissionError, OSError):  # exists but not ours, or cannot tell
            pass
    return state


def read_status(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The live status of the run in folder ``path`` (its status.json), or None before training
    wrote one.

    Keys: ``status`` (idle, running, paused, stopping, stopped, finished, diverged, failed, or
    ``interrupted`` when a live status names a process on this host that no longer exists: the
    run was killed), ``step``, ``max_steps``, ``eta_s`` (seconds, or None), ``reason``,
    ``error``, ``pid``, ``host``, ``updated`` (ISO time) and ``updated_unix``. A torn or foreign
    file raises ``ValueError`` naming it (it is written atomically, so a torn one is a damage).
    """
    p = Path(path) / STATUS_FILE
    if not p.exists():
        return None
    data = read_json(p, "status file")
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise _unreadable(p, "status file", 'expected a JSON object with a "status" string')
    return {**data, "status": effective_state({"state": data["status"], "pid": data.get("pid"),
                                                "host": data.get("host")})}


def now_iso() -> str:
    """Local time as ISO 8601 with the UTC offset, for config.json."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- loading

def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = read_json(path, "samples file")
    if not isinstance(data, list) or not all(
            isinstance(s, dict) and isinstance(s.get("step"), int) and isinstance(s.get("text"), str)
            for s in data):
        raise _unreadable(path, "samples file", "expected a JSON list of {\"step\": int, \"text\": str}")
    return data


def _model_from_file(cfg: ModelConfig, path: Path) -> tuple[GPT, dict[str, str]]:
    tensors, meta = read_safetensors(path)
    model = GPT(cfg)
    try:
        model.load_weights(tensors)
    except ValueError as e:
        raise ValueError(f"{path} does not fit the model in config.json: {e}") from None
    model.eval()
    return model, meta


def head_scores_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Head-score records ``[{"step", "scores": {kind: [[L x H]]}}]`` -> long DataFrame.

    Columns ``step, kind, layer, head, value``: one row per head, kind and evaluation step.
    """
    rows = [(r["step"], kind, l, h, float(v))
            for r in records for kind, grid in r["scores"].items()
            for l, per_head in enumerate(grid) for h, v in enumerate(per_head)]
    return pd.DataFrame(rows, columns=HEAD_SCORE_COLUMNS)


def read_baselines(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The n-gram baselines saved with a run (``baselines.json``, or a run folder holding it):
    rows ``{"n", "name", "val_loss", "val_bpc", …}`` as :func:`lm_core.ngram.baseline_losses`
    returns them, ascending in ``n``; ``[]`` when the run has none (older runs, huge texts)."""
    path = Path(path)
    if path.is_dir():
        path = path / BASELINES_FILE
    if not path.exists():
        return []
    data = read_json(path, "baselines file")
    if not isinstance(data, list) or not all(
            isinstance(b, dict) and isinstance(b.get("n"), int) and isinstance(b.get("name"), str)
            and isinstance(b.get("val_loss"), (int, float)) for b in data):
        raise _unreadable(path, "baselines file",
                          "expected a JSON list of {\"n\": int, \"name\": str, \"val_loss\": number, …}")
    return data


def read_head_scores(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = read_json(path, "head-scores file")

    def ok(r: Any) -> bool:
        return (isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("scores"), dict)
                and all(isinstance(g, list) and all(isinstance(row, list) and all(isinstance(v, (int, float))
                        for v in row) for row in g) for g in r["scores"].values()))

    if not isinstance(data, list) or not all(ok(r) for r in data):
        raise _unreadable(path, "head-scores file",
                          "expected a JSON list of {\"step\": int, \"scores\": {kind: [[number per head] per layer]}}")
    return data


@dataclass
class Run:
    """A loaded run folder. ``model`` is on the CPU in eval mode."""

    path: Path
    config: RunConfig
    model: GPT
    tokenizer: Tokenizer
    history: pd.DataFrame
    samples: list[dict[str, Any]]
    snapshots: list[int]   # steps with weights under snapshots/, ascending
    step: int              # the step of the weights in ``model`` (the last checkpoint)
    head_scores: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HEAD_SCORE_COLUMNS))
    # ^ probe head scores at each evaluation (step, kind, layer, head, value); see Trainer
    baselines: list[dict[str, Any]] = field(default_factory=list)
    # ^ n-gram baselines of the run's text (unigram .. 4-gram val loss); see read_baselines

    @property
    def status(self) -> str:
        """idle, running, finished, stopped, diverged, failed, or interrupted (killed while running)."""
        return effective_state(self.config.status)

    def load_snapshot(self, step: int) -> GPT:
        """The model as it was at ``step`` (one of :attr:`snapshots`), on the CPU in eval mode."""
        if step not in self.snapshots:
            raise ValueError(f"no snapshot at step {step} in {self.path}; available steps: {self.snapshots}")
        return _model_from_file(self.config.model, snapshot_path(self.path, step))[0]

    def load_best(self) -> tuple[GPT, int, float] | None:
        """``(model, step, val_loss)`` at the best validation loss, or None if never evaluated."""
        p = self.path / BEST_FILE
        if not p.exists():
            return None
        model, meta = _model_from_file(self.config.model, p)
        try:
            return model, int(meta["step"]), float(meta["val_loss"])
        except (KeyError, ValueError):
            raise _unreadable(p, "best checkpoint", "its metadata lacks step and val_loss") from None


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Only config.json of a run folder (cheap: nothing else is read)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"run folder {str(path)!r} does not exist or is not a folder")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise ValueError(f"{path} is not an LM Lens run folder: {CONFIG_FILE} is missing")
    return RunConfig.from_dict(read_json(cfg_path, "run config"), where=str(cfg_path))


def load_run(path: str | os.PathLike[str]) -> Run:
    """Load a run folder: config, tokenizer, weights of the last checkpoint, history, samples.

    Raises ``ValueError`` naming the file when one is missing, truncated, foreign or not in its
    format (a pickle in disguise included); no code from any file is ever run.
    """
    path = Path(path)
    config = load_run_config(path)
    tok_path = path / TOKENIZER_FILE
    try:
        tokenizer = load_tokenizer(tok_path)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if str(tok_path) in msg else f"{tok_path}: {msg}") from None
    padded = config.train.init_from is not None and tokenizer.vocab_size < config.model.vocab_size
    if tokenizer.vocab_size != config.model.vocab_size and not padded:  # a pretrained table may be padded
        raise ValueError(f"{tok_path} has {tokenizer.vocab_size} tokens but the model in "
                         f"{path / CONFIG_FILE} expects {config.model.vocab_size}; the files are from different runs")
    model, meta = _model_from_file(config.model, path / MODEL_FILE)
    history = read_history(path / HISTORY_FILE)
    samples = read_samples(path / SAMPLES_FILE)
    try:  # the weights say which step they are; config.json may lag them after a crash
        step = int(meta["step"])
    except (KeyError, ValueError):
        step = int(config.status.get("checkpoint_step", 0))
    head_scores = head_scores_frame(read_head_scores(path / HEAD_SCORES_FILE))
    return Run(path=path, config=config, model=model, tokenizer=tokenizer, history=history,
               samples=samples, snapshots=list_snapshot_steps(path), step=step, head_scores=head_scores,
               baselines=read_baselines(path / BASELINES_FILE))


@dataclass
class RunInfo:
    """One entry of :func:`list_runs`: a loadable run, or a folder that failed and why."""

    path: Path
    name: str
    status: str | None = None      # config status state when loadable
    step: int | None = None        # last checkpoint step
    corpus: str | None = None
    modified: float = 0.0          # mtime of config.json (sort key)
    error: str | None = None       # why the folder cannot be loaded; None when it can

    @property
    def ok(self) -> bool:
        return self.error is None


def list_runs(root: str | os.PathLike[str]) -> list[RunInfo]:
    """Run folders directly under ``root`` (newest first), for a run picker.

    Only each folder's config.json is parsed and the presence of the weights checked, so this
    is cheap; folders that would not load are listed with ``error`` saying why. Folders without
    a config.json are not runs and are skipped silently. A missing ``root`` gives ``[]``.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    out: list[RunInfo] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        cfg_path = d / CONFIG_FILE
        if not cfg_path.exists():
            continue
        info = RunInfo(path=d, name=d.name, modified=cfg_path.stat().st_mtime)
        try:
            cfg = load_run_config(d)
            info.status = effective_state(cfg.status)
            info.step = int(cfg.status.get("checkpoint_step", 0))
            info.corpus = cfg.corpus
            for required in (MODEL_FILE, TOKENIZER_FILE, HISTORY_FILE):
                if not (d / required).is_file():
                    raise ValueError(f"{d / required} is missing; the run has no checkpoint yet or is incomplete")
        except ValueError as e:
            info.error = str(e)
        out.append(info)
    out.sort(key=lambda r: r.modified, reverse=True)
    return out
