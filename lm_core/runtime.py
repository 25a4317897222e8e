"""Process-level runtime settings that make inspection fast on the CPU."""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)
_done: str | None = None


_libc_handle = None


def _libc():
    """glibc, loaded once (``OSError`` where there is no ``libc.so.6``: static or unusual builds)."""
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL("libc.so.6", use_errno=True)
    return _libc_handle


def tune_allocator() -> str:
    """Keep freed heap memory instead of returning it to the OS after every forward.

    A full activation capture keeps every activation alive until the cache is dropped; glibc
    then trims the top of the heap (``M_TRIM_THRESHOLD``, 128 KiB by default) and the next
    forward page-faults the same memory back in, which made a full capture cost ~1.9x a plain
    forward instead of ~1.3x (bench/bench_core.py). Raising the trim threshold to 256 MiB and
    pinning the mmap threshold at glibc's own dynamic maximum (32 MiB) removes that cost.
    Called by ``run_with_cache``, the CLI and the app; idempotent; a no-op off glibc or with
    ``LM_LENS_NO_MALLOC_TUNING=1``. Returns what was done.
    """
    global _done
    if _done is not None:
        return _done
    if os.environ.get("LM_LENS_NO_MALLOC_TUNING") == "1":
        _done = "unchanged (LM_LENS_NO_MALLOC_TUNING=1)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _done = "not glibc: unchanged"
    else:
        try:
            libc = _libc()
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
            ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20)
            _done = "glibc mallopt(M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=256 MiB)" if ok else "mallopt failed"
        except OSError as e:  # no libc.so.6 (static or unusual builds)
            _done = f"unchanged ({e})"
    log.debug("allocator: %s", _done)
    return _done


SERVER_THREADS_ENV = "LM_LENS_SERVER_THREADS"
_serving: int | None = None


def set_serving_threads(default: int = 1) -> int:
    """Set torch's CPU thread count for a server that answers several sessions (the app).

    Each session's request runs in its own Python thread, and torch gives every calling thread
    its own OpenMP team of ``torch.get_num_threads()`` threads: six sessions asking at once
    with the default (every core) put 6 × cores threads on the cores, and OpenMP threads that
    wait for each other at every operation then stall. One thread per request lets the
    requests themselves share the cores (measured with ``bench/bench_live.py --only sessions``).
    Env ``LM_LENS_SERVER_THREADS`` overrides ``default``. Idempotent; returns the count.
    """
    global _serving
    if _serving is None:
        import torch

        env = os.environ.get(SERVER_THREADS_ENV, "").strip()
        n = default
        if env:
            try:
                n = max(1, int(env))
            except ValueError:
                log.warning("ignoring %s=%r: not a whole number", SERVER_THREADS_ENV, env)
        torch.set_num_threads(n)
        _serving = n
    return _serving


_frozen = False


def freeze_startup_objects() -> bool:
    """Move every object alive now (imported modules: torch, pandas, plotly…) into the garbage
    collector's permanent generation, once per process, so Python's full collections stop walking
    them again and again (a long-lived server: each full collection costs ~0.1 s of CPU
    otherwise). Returns True the first time."""
    global _frozen
    if _frozen:
        return False
    import gc

    gc.collect()
    gc.freeze()
    _frozen = True
    return True


_warming = None


def warm_imports() -> bool:
    """Import, in a background thread, what a server would otherwise import while a person waits:
    every torch optimizer imports ``torch._dynamo`` the first time one is built (~1-2 s on a small
    CPU), e.g. to measure a training step's time. (Writing a run folder builds none: a Trainer
    builds its optimizer at the first step.) For a server; once per process. Returns True the
    first time."""
    global _warming
    if _warming is not None:
        return False
    import threading

    def work() -> None:
        try:
            import torch._dynamo  # noqa: F401
        except Exception as e:  # noqa: BLE001 - a warm-up is never an error
            log.debug("warm-up import failed: %s", e)

    _warming = threading.Thread(target=work, name="lm-lens-warm-imports", daemon=True)
    _warming.start()
    return True


_HUGE = 2 * 2**20  # a transparent huge page on x86-64 and arm64 Linux
_MADV_HUGEPAGE = 14


def _madvise_huge(t) -> bool:
    """Ask Linux to back ``t``'s (not yet touched) memory with huge pages; False where it cannot."""
    if platform.system() != "Linux":
        return False
    try:
        p, n = t.data_ptr(), t.numel() * t.element_size()
        start = (p + _HUGE - 1) // _HUGE * _HUGE
        length = (p + n - start) // _HUGE * _HUGE
        return length > 0 and _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_HUGEPAGE) == 0
    except (OSError, AttributeError):
        return False


def transposed_copy(w):
    """``w.t().contiguous()`` of a large 2-D CPU matrix, 3-4x faster.

    ``generate`` keeps the unembedding transposed for a long generation (a one-row product reads
    it ~1.8x faster that way); the plain copy of GPT-2's 154 MB matrix took ~180 ms on 2 cores,
    mostly faulting in 38k fresh 4 KiB pages and transposing across the whole matrix. Here the
    new memory is advised to use transparent huge pages (Linux, where THP is ``madvise`` or
    ``always``) and the copy goes in slices of 256 rows that stay in cache: ~40 ms. Same values.
    """
    import torch

    if w.dim() != 2 or w.device.type != "cpu" or w.numel() * w.element_size() < 8 * _HUGE:
        return w.t().contiguous()
    rows, cols = w.shape
    out = torch.empty(cols, rows, dtype=w.dtype)
    _madvise_huge(out)
    for i in range(0, rows, 256):
        out[:, i:i + 256].copy_(w[i:i + 256].t())
    return out
