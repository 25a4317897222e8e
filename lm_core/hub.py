"""The Hugging Face hub as LM Lens uses it: what a repo's loading needs, what the local cache
already holds, and a download that reports its progress and can be stopped.

:func:`lm_core.load_pretrained` reads a model from the cache when it is there; :func:`download`
puts exactly the files it reads into that cache first (``config.json``, the weights, the
tokenizer), one file after another through ``huggingface_hub.hf_hub_download``, so a caller
(the app's sidebar) can show bytes as they arrive and cancel between two chunks. ::

    stop = threading.Event()
    download("EleutherAI/pythia-70m", on_progress=lambda p: print(p.fraction), cancel=stop)
    cached_snapshot("EleutherAI/pythia-70m")        # the snapshot folder, or None

A cancelled download raises :class:`DownloadCancelled`; huggingface_hub deletes the partial
file, the files finished before stay in the cache (the next try skips them).

Files the hub keeps in Xet storage download, when ``hf_xet`` is installed, through its own
transfer engine, which reports progress from Rust threads and is stopped there only by a
KeyboardInterrupt. A program that offers a Cancel button (the app) calls
:func:`stoppable_downloads` once: every file then comes over plain HTTP, chunk by chunk, where
``cancel`` is checked.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .pretrained import _hub_unreachable

__all__ = ["DownloadCancelled", "DownloadPlan", "Progress", "cached_snapshot", "download", "endpoint", "fetch_config",
           "files_to_fetch", "hub_unavailable", "plan", "stoppable_downloads"]

_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
_BIN_SHARD = re.compile(r"pytorch_model-\d+-of-\d+\.bin")


class DownloadCancelled(Exception):
    """The download was cancelled (its ``cancel`` event was set)."""


@dataclass(frozen=True)
class Progress:
    """Where a download stands: ``done_bytes`` of ``total_bytes`` (None while unknown), in
    ``files_done`` of ``files_total`` files, ``filename`` the one arriving now."""

    filename: str
    done_bytes: int
    total_bytes: int | None
    files_done: int
    files_total: int

    @property
    def fraction(self) -> float | None:
        """0..1, or None while the total is unknown."""
        if not self.total_bytes:
            return None
        return min(1.0, self.done_bytes / self.total_bytes)


@dataclass(frozen=True)
class DownloadPlan:
    """The files a load needs from one revision of a repo, with their sizes (None if the hub did
    not say)."""

    name: str
    revision: str | None
    files: tuple[tuple[str, int | None], ...]

    @property
    def total_bytes(self) -> int | None:
        sizes = [s for _, s in self.files]
        return None if any(s is None for s in sizes) else int(sum(sizes))


def files_to_fetch(filenames: Iterable[str]) -> list[str]:
    """Of a repo's files, the ones :func:`lm_core.load_pretrained` reads: ``config.json``,
    ``generation_config.json`` when there is one, the weights (``model.safetensors``, or its index
    and shards; a pickled ``pytorch_model.bin`` only when there is no safetensors file: transformers
    reads it with ``weights_only=True``) and the tokenizer (``tokenizer.json``, else ``vocab.json``
    + ``merges.txt``). Raises ``ValueError`` when the repo lacks a config or weights."""
    names = set(filenames)
    if "config.json" not in names:
        raise ValueError("the repo has no config.json: it is not a transformers model")
    out = ["config.json"] + [n for n in ("generation_config.json",) if n in names]
    if "model.safetensors" in names:
        out.append("model.safetensors")
    elif "model.safetensors.index.json" in names:
        out += ["model.safetensors.index.json"] + sorted(n for n in names if _SHARD.fullmatch(n))
    elif "pytorch_model.bin" in names:
        out.append("pytorch_model.bin")
    elif "pytorch_model.bin.index.json" in names:
        out += ["pytorch_model.bin.index.json"] + sorted(n for n in names if _BIN_SHARD.fullmatch(n))
    else:
        raise ValueError("the repo has no model.safetensors (nor pytorch_model.bin): no weights to load")
    if "tokenizer.json" in names:
        out.append("tokenizer.json")
    elif {"vocab.json", "merges.txt"} <= names:
        out += ["vocab.json", "merges.txt"]
    return out


def endpoint() -> str:
    """The hub huggingface_hub asks now (``HF_ENDPOINT``), for keying what was learned from it."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT} {constants.HF_HUB_CACHE} offline={constants.HF_HUB_OFFLINE}"


def hub_unavailable() -> str | None:
    """``None`` when the hub can be asked, else why not ("HF_HUB_OFFLINE is set", or the host that
    does not answer within a few seconds)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    why = _hub_unreachable()
    return None if why is None else f"the hub at {why} cannot be reached"


def _api():
    from huggingface_hub import HfApi

    return HfApi()  # a fresh one reads the endpoint now (HF_ENDPOINT), not at import


def plan(name: str, revision: str | None = None) -> DownloadPlan:
    """What :func:`download` would fetch, with the sizes the hub gives (one request). Raises
    ``ValueError`` for an unknown repo or revision, or a repo without a config or weights."""
    try:
        info = _api().model_info(name, revision=revision, files_metadata=True)
    except Exception as e:  # unknown repo or revision, network: the hub raises many types
        at = f"{name!r}" + (f" at revision {revision!r}" if revision else "")
        raise ValueError(f"could not list the files of {at} on the Hugging Face hub ({type(e).__name__}: {e}); "
                         f"check the name") from e
    sizes = {s.rfilename: getattr(s, "size", None) for s in (info.siblings or [])}
    try:
        wanted = files_to_fetch(sizes)
    except ValueError as e:
        raise ValueError(f"{name!r}: {e}") from None
    return DownloadPlan(name, revision, tuple((f, sizes[f]) for f in wanted))


def _progress_bar(report: Callable[[int, int | None], None], cancel: threading.Event | None):
    """A tqdm class for ``hf_hub_download`` that reports each chunk and stops at ``cancel``."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Bar(hf_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            report(0, self.total)

        def update(self, n=1):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("cancelled")
            report(int(n or 0), None)
            return super().update(n)

    return Bar


def stoppable_downloads() -> bool:
    """Make this process download every hub file over plain HTTP, where :func:`download` can stop
    between two chunks, instead of through Xet storage's transfer engine (huggingface_hub's
    ``HF_HUB_DISABLE_XET``). Left alone when that variable is set in the environment: the person
    running the program chose. Returns whether downloads are now plain HTTP."""
    import os

    from huggingface_hub import constants

    if os.environ.get("HF_HUB_DISABLE_XET") is None:
        constants.HF_HUB_DISABLE_XET = True
    return bool(constants.HF_HUB_DISABLE_XET)


def download(name: str, revision: str | None = None, *, on_progress: Callable[[Progress], None] | None = None,
             cancel: threading.Event | None = None) -> Path:
    """Put what loading ``name`` (at ``revision``) needs into the Hugging Face cache, file by
    file, calling ``on_progress`` as bytes arrive; returns the snapshot folder.

    Already cached: returns at once, nothing is asked. ``cancel`` set: raises
    :class:`DownloadCancelled` at the next chunk (of a plain HTTP download: see
    :func:`stoppable_downloads`). Offline, unknown repo or revision, no weights:
    ``ValueError`` saying so.
    """
    folder = cached_snapshot(name, revision)
    if folder is not None:
        return folder
    why = hub_unavailable()
    if why is not None:
        raise ValueError(f"{name!r} is not in the local cache and {why}, so it cannot be downloaded now")
    p = plan(name, revision)
    from huggingface_hub import hf_hub_download

    lock = threading.Lock()
    known = {f: s for f, s in p.files}
    total = p.total_bytes
    state = {"done": 0, "files": 0, "file": p.files[0][0], "total": total}

    def emit() -> None:
        if on_progress is not None:
            on_progress(Progress(state["file"], state["done"], state["total"], state["files"], len(p.files)))

    def report(n: int, file_total: int | None) -> None:
        with lock:
            state["done"] += n
        emit()

    path = None
    for filename, _ in p.files:
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled("cancelled")
        state["file"] = filename
        emit()
        before = state["done"]
        path = hf_hub_download(name, filename, revision=revision, tqdm_class=_progress_bar(report, cancel))
        if known.get(filename) is not None:  # a cached blob reports nothing: count it anyway
            state["done"] = before + int(known[filename])
        state["files"] += 1
        emit()
    return Path(path).parent


def cached_snapshot(name: str, revision: str | None = None) -> Path | None:
    """The cache's snapshot folder of ``name`` at ``revision`` (default ``main``) when it holds
    everything loading needs (config, every weight file, a tokenizer), else None. No network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = try_to_load_from_cache(name, "config.json", revision=revision or "main")
    except Exception:  # a name the cache cannot hold (e.g. a path), a broken cache
        return None
    if not isinstance(cfg, str):
        return None
    folder = Path(cfg).parent
    try:
        names = {p.name for p in folder.iterdir() if p.is_file()}
        wanted = files_to_fetch(names)
    except (OSError, ValueError):
        return None
    if not ({"tokenizer.json"} <= names or {"vocab.json", "merges.txt"} <= names):
        return None
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in wanted:
            try:
                shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError):
                return None
            if not shards <= names:
                return None
    return folder


def fetch_config(name: str, revision: str | None = None) -> dict:
    """``config.json`` of hub repo ``name`` (from the cache when there; else one small download).
    Raises ``ValueError`` saying why it could not be read."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(name, "config.json", revision=revision, local_files_only=True)
    except Exception:  # not cached (or not a valid name): ask the hub
        why = hub_unavailable()
        if why is not None:
            raise ValueError(f"{name!r} is not in the local cache and {why}, so its size cannot be looked up") from None
        try:
            path = hf_hub_download(name, "config.json", revision=revision)
        except Exception as e:  # unknown repo, gated, network
            raise ValueError(f"could not read the config.json of {name!r} from the Hugging Face hub "
                             f"({type(e).__name__}); check the name") from e
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"the config.json of {name!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"the config.json of {name!r} does not hold a JSON object")
    return data
