"""Corpora: the text a model trains on, named by a short spec string.

``load_corpus(spec)`` accepts

* ``"builtin:python-docs"``: Python's own help topics (``pydoc_data``), offline, ~465 KB;
* ``"tiny-shakespeare"``: the copy shipped in ``assets/data`` (xz, 364 KB, checksummed), so
  it works offline; or the file that env ``LM_LENS_TINY_SHAKESPEARE`` names; or, where neither
  is there (or with ``fresh=True``), downloaded once into a cache folder and checksummed;
* ``"synthetic:<task>"`` or ``"synthetic:<task>?n=2000&seed=3"``: a generated algorithmic task
  (see :data:`SYNTHETIC_TASKS`), deterministic for a seed;
* ``"builtin:python-docs?chars=6000"`` or ``"tiny-shakespeare?chars=6000"``: only the first
  ``chars`` characters of that corpus (a text small enough for a model to memorise: the
  over-fitting demonstration);
* a path to a UTF-8 text file.

Every corpus comes back as one ``str``; bad input raises ``ValueError`` with a sentence that
names the offending spec or file and says what to do.
"""

from __future__ import annotations

import hashlib
import lzma
import http.client
import logging
import os
import random
import string
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "BUILTIN_CORPORA",
    "MAX_CORPUS_BYTES",
    "SYNTHETIC_TASKS",
    "SyntheticTask",
    "TINY_SHAKESPEARE_SHA256",
    "TINY_SHAKESPEARE_URL",
    "corpus_from_bytes",
    "corpus_from_text",
    "corpus_stats",
    "default_cache_dir",
    "download_text",
    "generate_synthetic",
    "list_synthetic_tasks",
    "load_corpus",
    "load_tiny_shakespeare",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None"], None]
"""``progress(done_bytes, total_bytes)``; ``total_bytes`` is None when the server does not say."""

MAX_CORPUS_BYTES = 50 * 1024 * 1024
"""Largest corpus accepted from a file, an upload or a download (bytes of UTF-8)."""

BUILTIN_CORPORA: dict[str, str] = {
    "builtin:python-docs": (
        "Python's own help topics (pydoc_data.topics, shipped with every Python): about 465 KB "
        "of English technical prose with code. Works offline."
    ),
}

TINY_SHAKESPEARE = "tiny-shakespeare"
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_FILENAME = "tinyshakespeare.txt"
ENV_TINY_SHAKESPEARE = "LM_LENS_TINY_SHAKESPEARE"  # path to a local copy: no download
ENV_TINY_SHAKESPEARE_URL = "LM_LENS_TINY_SHAKESPEARE_URL"  # a mirror to download from instead
# The copy that ships with LM Lens (xz-compressed). A library installed without the assets
# falls back to the download.
SHIPPED_TINY_SHAKESPEARE = Path(__file__).resolve().parent.parent / "assets" / "data" / "tinyshakespeare.txt.xz"
ENV_CACHE = "LM_LENS_CACHE"  # cache folder; default ~/.cache/lm_lens

SYNTHETIC_PREFIX = "synthetic:"
_CHUNK = 64 * 1024


# ----------------------------------------------------------------------------- checks


def _clean_text(text: str, name: str) -> str:
    """Shared checks on decoded text: not empty, no NUL; Windows newlines become ``\\n``."""
    if "\x00" in text:
        raise ValueError(
            f"{name} looks binary (it contains NUL bytes); use a UTF-8 text file."
        )
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise ValueError(f"{name} is empty; give it some text to train on.")
    return text


def _check_size(n_bytes: int, name: str) -> None:
    if n_bytes > MAX_CORPUS_BYTES:
        raise ValueError(
            f"{name} is {n_bytes:,} bytes, more than the {MAX_CORPUS_BYTES:,}-byte limit "
            "(MAX_CORPUS_BYTES); use a smaller excerpt."
        )


def corpus_from_bytes(data: bytes, name: str) -> str:
    """Turn an uploaded file's bytes into corpus text, with the same checks as a file path.

    Raises ``ValueError`` (naming ``name``) when the data is too large, binary (NUL bytes), not
    UTF-8, or empty/whitespace-only. A UTF-8 byte-order mark is dropped and ``\\r\\n`` becomes
    ``\\n``.
    """
    _check_size(len(data), name)
    if b"\x00" in data:
        raise ValueError(f"{name} looks binary (it contains NUL bytes); use a UTF-8 text file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{name} is not UTF-8 text (byte 0x{data[e.start]:02X} at offset {e.start} is "
            "invalid); save it as UTF-8 and try again."
        ) from None
    return _clean_text(text, name)


def corpus_from_text(text: str, name: str = "The pasted text") -> str:
    """Check pasted text like a file (not empty, not too large, no NUL) and return it."""
    _check_size(len(text.encode("utf-8", errors="surrogatepass")), name)
    return _clean_text(text, name)


def _read_corpus_file(path: Path) -> str:
    name = f"Corpus file {str(path)!r}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ValueError(f"{name} does not exist; check the path.") from None
    except OSError as e:
        raise ValueError(f"{name} could not be read ({e.strerror}).") from None
    if path.is_dir():
        raise ValueError(f"{name} is a folder; point at a UTF-8 text file.")
    _check_size(size, name)  # before reading, so a huge file is never loaded
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{name} could not be read ({e.strerror}).") from None
    return corpus_from_bytes(data, name)


def corpus_stats(text: str) -> dict[str, int]:
    """Numbers for a corpus preview: ``chars``, ``distinct_chars``, ``lines``, ``bytes`` (UTF-8)."""
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return {
        "chars": len(text),
        "distinct_chars": len(set(text)),
        "lines": lines,
        "bytes": len(text.encode("utf-8", errors="surrogatepass")),
    }


# ----------------------------------------------------------------------------- built-in


def _python_docs() -> str:
    from pydoc_data.topics import topics  # ships with CPython; imported lazily (~0.5 MB)

    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"


_BUILTIN_LOADERS: dict[str, Callable[[], str]] = {"builtin:python-docs": _python_docs}


# ----------------------------------------------------------------------------- download


def default_cache_dir() -> Path:
    """Where downloads are kept: env ``LM_LENS_CACHE``, else ``~/.cache/lm_lens``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lm_lens"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_text(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
    hint: str = "",
) -> str:
    """Download ``url`` to ``dest`` (once) and return its text.

    If ``dest`` already exists and matches ``sha256`` (or no checksum is given), it is reused
    without touching the network. Otherwise the body is streamed in chunks, calling
    ``progress(done_bytes, total_bytes)`` as it goes, checked against Content-Length and
    ``sha256``, and moved into place atomically, so ``dest`` is either absent or complete.
    Any failure raises ``ValueError``; ``hint`` (a sentence) is appended to network errors.
    """
    dest = Path(dest)
    suffix = f" {hint}" if hint else ""
    if dest.is_file() and (sha256 is None or _sha256_file(dest) == sha256):
        log.info("using cached %s", dest)
        size = dest.stat().st_size
        if progress is not None:
            progress(size, size)
        return _read_corpus_file(dest)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise ValueError(
            f"Cannot write to the cache folder {str(dest.parent)!r} ({e.strerror}); set "
            f"{ENV_CACHE} to a writable folder."
        ) from None
    tmp = Path(tmp_name)
    log.info("downloading %s to %s", url, dest)
    try:
        with os.fdopen(fd, "wb") as out:
            done, total, digest = _stream(url, out, progress, timeout, suffix)
        if total is not None and done < total:
            raise ValueError(
                f"The download of {url} was cut off after {done:,} of {total:,} bytes; check "
                f"your connection and try again.{suffix}"
            )
        if sha256 is not None and digest != sha256:
            raise ValueError(
                f"The file downloaded from {url} has sha256 {digest}, expected {sha256}: it was "
                f"damaged on the way or changed on the server. Try again.{suffix}"
            )
        text = corpus_from_bytes(tmp.read_bytes(), f"The file downloaded from {url}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return text


def _stream(
    url: str, out: BinaryIO, progress: Progress | None, timeout: float, suffix: str
) -> tuple[int, int | None, str]:
    """Copy the body of ``url`` into ``out``; return (bytes received, Content-Length, sha256)."""
    done = 0
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) URL)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None:
                _check_size(total, f"The file at {url}")
            if progress is not None:
                progress(0, total)
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                _check_size(done, f"The file at {url}")
                if progress is not None:
                    progress(done, total)
    except urllib.error.HTTPError as e:
        raise ValueError(
            f"Downloading {url} failed with HTTP {e.code} ({e.reason}); check the URL.{suffix}"
        ) from None
    except http.client.IncompleteRead as e:
        got = done + len(e.partial)
        expected = f"{got + e.expected:,}" if e.expected is not None else "the announced"
        raise ValueError(
            f"The download of {url} was cut off after {got:,} of {expected} bytes; check your "
            f"connection and try again.{suffix}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        if done:
            raise ValueError(
                f"The download of {url} broke off after {done:,} bytes ({reason}); check your "
                f"connection and try again.{suffix}"
            ) from None
        raise ValueError(
            f"Could not reach {url} ({reason}); are you offline?{suffix}"
        ) from None
    return done, total, digest.hexdigest()


def _shipped_tiny_shakespeare() -> str | None:
    """The shipped copy, or None when it is not there; a damaged copy is an error, not a fallback."""
    path = SHIPPED_TINY_SHAKESPEARE
    if not path.is_file():
        return None
    try:
        data = lzma.decompress(path.read_bytes())
    except (OSError, lzma.LZMAError) as e:
        raise ValueError(
            f"The shipped Tiny Shakespeare {str(path)!r} is damaged ({e}); restore it with "
            "`git checkout -- assets/data`, or download a fresh copy."
        ) from None
    if hashlib.sha256(data).hexdigest() != TINY_SHAKESPEARE_SHA256:
        raise ValueError(
            f"The shipped Tiny Shakespeare {str(path)!r} does not match its checksum; restore it "
            "with `git checkout -- assets/data`, or download a fresh copy."
        )
    return corpus_from_bytes(data, "Tiny Shakespeare")


def load_tiny_shakespeare(
    *, progress: Progress | None = None, cache_dir: str | os.PathLike[str] | None = None,
    fresh: bool = False,
) -> str:
    """Tiny Shakespeare (1,115,394 characters, 65 distinct): nanoGPT's character benchmark.

    In this order: the file env ``LM_LENS_TINY_SHAKESPEARE`` names (a local copy); the copy
    shipped with LM Lens (:data:`SHIPPED_TINY_SHAKESPEARE`, checksummed), so the presets work
    offline; else a download of :data:`TINY_SHAKESPEARE_URL` (or env
    ``LM_LENS_TINY_SHAKESPEARE_URL``) into ``cache_dir`` (default :func:`default_cache_dir`),
    checked against :data:`TINY_SHAKESPEARE_SHA256`, reused offline later. ``fresh=True``
    skips the local copies and downloads (into the cache, replacing nothing until complete).
    """
    if not fresh:
        local = os.environ.get(ENV_TINY_SHAKESPEARE)
        if local:
            path = Path(local).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"{ENV_TINY_SHAKESPEARE} points at {str(path)!r}, which does not exist; fix the "
                    "path or unset the variable to use the shipped copy."
                )
            return _read_corpus_file(path)
        shipped = _shipped_tiny_shakespeare()
        if shipped is not None:
            return shipped
    url = os.environ.get(ENV_TINY_SHAKESPEARE_URL) or TINY_SHAKESPEARE_URL
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = folder / TINY_SHAKESPEARE_FILENAME
    if fresh and dest.is_file():  # a fresh copy: download again, then replace the cached one
        dest = folder / (TINY_SHAKESPEARE_FILENAME + ".fresh")
    text = download_text(
        url,
        dest,
        sha256=TINY_SHAKESPEARE_SHA256,
        progress=progress,
        hint=(
            f"Set {ENV_TINY_SHAKESPEARE} to a local copy of the file, or use the copy shipped with "
            "LM Lens, or pick the built-in corpus builtin:python-docs."
        ),
    )
    if dest.name.endswith(".fresh"):
        os.replace(dest, folder / TINY_SHAKESPEARE_FILENAME)
    return text


# ----------------------------------------------------------------------------- synthetic

_LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class SyntheticTask:
    """A generated character-level task.

    ``generate(n, rng)`` returns ``n`` lines of plain text (each ending in ``"\\n"``) drawn from
    ``rng``; ``default_n`` sizes the default corpus at a few hundred KB. ``description`` says
    what a model should learn and which heads it should grow.
    """

    name: str
    description: str
    example: str
    generate: Callable[[int, random.Random], str] = field(repr=False)
    default_n: int = 1000

    def text(self, n: int | None = None, seed: int = 0) -> str:
        """The corpus for ``n`` lines (default ``default_n``) with seed ``seed``: deterministic."""
        return self.generate(self.default_n if n is None else n, random.Random(seed))


INDUCTION_REPEAT = (5, 14)    # inclusive range of a repeated run's length (it appears twice)
INDUCTION_CHAIN = (10, 28)    # inclusive range of a chain segment's length
INDUCTION_REPEAT_SHARE = 0.7  # the share of segments that are repeats; the rest are chains
INDUCTION_CHAIN_RULE = 0.9    # how often a chain letter follows the trigram table (else random)


def induction_segments(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """The ``n`` segments of ``synthetic:induction``, each ``(kind, text)``, kind "repeat" or "chain".

    * **repeat**: a run of random letters (drawn with replacement) written twice, ``"qzkqzk"``
      style; the second copy is predictable only by an induction head: find the earlier
      occurrence of the current letter, copy the letter that followed it.
    * **chain**: letters from a fixed random trigram table (the next letter is a function of the
      previous two, 90% of the time): predictable only by knowing the *previous* letter, which
      is what makes layer 0 grow the previous-token head an induction head is built on.
    """
    letters = _LETTERS
    table = {(a, b): rng.choice(letters) for a in letters for b in letters}
    out: list[tuple[str, str]] = []
    for _ in range(n):
        if rng.random() < INDUCTION_REPEAT_SHARE:
            run = "".join(rng.choices(letters, k=rng.randint(*INDUCTION_REPEAT)))
            out.append(("repeat", run + run))
        else:
            chain = rng.choices(letters, k=2)
            for _ in range(rng.randint(*INDUCTION_CHAIN) - 2):
                rule = rng.random() < INDUCTION_CHAIN_RULE
                chain.append(table[chain[-2], chain[-1]] if rule else rng.choice(letters))
            out.append(("chain", "".join(chain)))
    return out


def _induction(n: int, rng: random.Random) -> str:
    # No separators: every token of the text is a letter, so a probe of random letters (how an
    # induction score is measured) looks like training data, and no head learns to stop at a
    # line break.
    return "".join(text for _, text in induction_segments(n, rng))


def _random_word(rng: random.Random, lo: int = 3, hi: int = 12) -> str:
    return "".join(rng.choices(_LETTERS, k=rng.randint(lo, hi)))


def _copy(n: int, rng: random.Random) -> str:
    return "".join(f"{w}|{w}\n" for w in (_random_word(rng) for _ in range(n)))


def _reverse(n: int, rng: random.Random) -> str:
    return "".join(f"{w}|{w[::-1]}\n" for w in (_random_word(rng) for _ in range(n)))


def _sort(n: int, rng: random.Random) -> str:
    return "".join(f"{w}|{''.join(sorted(w))}\n" for w in (_random_word(rng) for _ in range(n)))


MODULUS = 97
HELD_OUT_FRACTION = 0.1


def _modular_addition(n: int, rng: random.Random) -> str:
    pairs = [(a, b) for a in range(MODULUS) for b in range(MODULUS)]
    rng.shuffle(pairs)
    # The last 10% of the lines use problems that never appear before them, so the trainer's
    # validation split (the last 10% of the text) measures generalisation, not memory.
    n_held_pairs = round(len(pairs) * 0.3)
    held, train = pairs[:n_held_pairs], pairs[n_held_pairs:]
    n_val = round(n * HELD_OUT_FRACTION) if n >= 10 else 0
    chosen = rng.choices(train, k=n - n_val) + rng.choices(held, k=n_val)
    return "".join(f"{a}+{b}={(a + b) % MODULUS}\n" for a, b in chosen)


def _balanced(rng: random.Random, pairs: int) -> str:
    out, depth, left = [], 0, 2 * pairs
    while left:
        # Open when we must (depth 0) or may (room to close later); close otherwise.
        if depth == 0 or (depth < left and rng.random() < 0.5):
            out.append("(")
            depth += 1
        else:
            out.append(")")
            depth -= 1
        left -= 1
    return "".join(out)


def _is_balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += 1 if c == "(" else -1
        if depth < 0:
            return False
    return depth == 0


def _brackets(n: int, rng: random.Random) -> str:
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            s = _balanced(rng, rng.randint(1, 10))
        elif kind < 0.75:
            # Same number of "(" and ")", wrong order: counting alone cannot tell.
            pairs = rng.randint(1, 10)
            chars = list("(" * pairs + ")" * pairs)
            while True:
                rng.shuffle(chars)
                s = "".join(chars)
                if not _is_balanced(s):
                    break
        else:
            while True:
                s = "".join(rng.choices("()", k=rng.randint(1, 20)))
                if not _is_balanced(s):
                    break
        lines.append(f"{s}={'yes' if _is_balanced(s) else 'no'}\n")
    return "".join(lines)


SYNTHETIC_TASKS: dict[str, SyntheticTask] = {
    t.name: t
    for t in [
        SyntheticTask(
            name="induction",
            description=(
                "One unbroken stream of lowercase letters made of segments: 70% are a random "
                "run of 5-14 letters written twice ('qzkqzk'), 30% follow a fixed random "
                "trigram table (the next letter depends on the previous two). The chains make "
                "layer 0 grow a previous-token head; the repeats then make layer 1 grow an "
                "induction head on top of it (attention one position right of the earlier "
                "occurrence of the current letter), and the loss drops in a bump when it forms. "
                "n counts segments, not lines."
            ),
            example="pqhdnpqhdn" + "kvmaxtrlbz",
            generate=_induction,
            default_n=20000,
        ),
        SyntheticTask(
            name="copy",
            description=(
                "'abc|abc': a random word of 3-12 letters, a bar, then the same word. After "
                "the bar, a head must attend to the matching position of the first copy "
                "(word length + 1 back, a distance that changes every line) or act as an "
                "induction head."
            ),
            example="kqzpa|kqzpa",
            generate=_copy,
            default_n=20000,
        ),
        SyntheticTask(
            name="reverse",
            description=(
                "'abc|cba': a random word, a bar, then the word backwards. After the bar, "
                "heads attend to mirror positions around the bar: an anti-diagonal in the "
                "attention pattern."
            ),
            example="kqzpa|apzqk",
            generate=_reverse,
            default_n=20000,
        ),
        SyntheticTask(
            name="sort",
            description=(
                "'dbca|abcd': a random word, a bar, then its letters in sorted order. The "
                "model must find the smallest letter not yet written: heads attend to the "
                "first half by letter rather than by position. Harder than copy or reverse."
            ),
            example="dbca|abcd",
            generate=_sort,
            default_n=20000,
        ),
        SyntheticTask(
            name="modular-addition",
            description=(
                f"'a+b=c' with c = (a + b) mod {MODULUS}. The last 10% of lines use problems "
                "never seen earlier in the text, so validation loss measures generalisation: "
                "memorising gives low train loss first, and a model that generalises (late, "
                "'grokking') learns Fourier-like features of the numbers; the '=' position "
                "attends to both operands."
            ),
            example="12+90=5",
            generate=_modular_addition,
            default_n=40000,
        ),
        SyntheticTask(
            name="brackets",
            description=(
                "'(()())=yes' / '(()=no': is the bracket string balanced? Half the lines are "
                "balanced; a quarter have equal counts in a wrong order, so counting is not "
                "enough. The model must track the running depth (heads that average over "
                "the '(' and ')' so far) and spot where it goes below zero."
            ),
            example="(()())=yes",
            generate=_brackets,
            default_n=25000,
        ),
    ]
}

MAX_SYNTHETIC_LINES = 500_000


def list_synthetic_tasks() -> list[str]:
    """Names of the synthetic tasks, in display order (look them up in :data:`SYNTHETIC_TASKS`)."""
    return list(SYNTHETIC_TASKS)


def _unknown_task(name: str) -> ValueError:
    return ValueError(
        f"Unknown synthetic task {name!r}; valid tasks: {', '.join(SYNTHETIC_TASKS)}."
    )


def generate_synthetic(task: str, *, n: int | None = None, seed: int = 0) -> str:
    """Text of synthetic task ``task``: ``n`` lines (default: the task's ``default_n``).

    The same ``task``, ``n`` and ``seed`` always give the same text.
    """
    if task not in SYNTHETIC_TASKS:
        raise _unknown_task(task)
    if n is not None and not 1 <= n <= MAX_SYNTHETIC_LINES:
        raise ValueError(
            f"n={n} is out of range for a synthetic task; use 1..{MAX_SYNTHETIC_LINES}."
        )
    if seed < 0:
        raise ValueError(f"seed={seed} is negative; use a seed of 0 or more.")
    return SYNTHETIC_TASKS[task].text(n, seed)


def _load_synthetic(spec: str) -> str:
    """Parse ``synthetic:<task>[?n=<lines>&seed=<int>]`` and generate it."""
    body = spec[len(SYNTHETIC_PREFIX) :]
    task, _, query = body.partition("?")
    if task not in SYNTHETIC_TASKS:
        raise _unknown_task(task)
    params: dict[str, int] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in ("n", "seed") or not eq:
            raise ValueError(
                f"Corpus spec {spec!r} has a bad parameter {item!r}; the parameters are "
                "n=<lines> and seed=<integer>, e.g. 'synthetic:induction?n=2000&seed=3'."
            )
        if key in params:
            raise ValueError(f"Corpus spec {spec!r} gives {key!r} twice; give it once.")
        try:
            params[key] = int(value)
        except ValueError:
            raise ValueError(
                f"Corpus spec {spec!r}: {key}={value!r} is not a whole number."
            ) from None
    return generate_synthetic(task, n=params.get("n"), seed=params.get("seed", 0))


# ----------------------------------------------------------------------------- entry point

VALID_FORMS = (
    f"{', '.join(BUILTIN_CORPORA)}, {TINY_SHAKESPEARE}, synthetic:<task> (tasks: "
    f"{', '.join(SYNTHETIC_TASKS)}; optional '?n=<lines>&seed=<int>'), either of the first two "
    "cut to its first characters ('?chars=<n>'), or a path to a UTF-8 text file"
)
MIN_SLICE_CHARS = 100


def _split_slice(spec: str) -> tuple[str, int | None]:
    """``"builtin:python-docs?chars=6000"`` -> ``("builtin:python-docs", 6000)``; other specs unchanged."""
    base, sep, query = spec.partition("?chars=")
    if not sep or not (base in _BUILTIN_LOADERS or base == TINY_SHAKESPEARE):
        return spec, None
    try:
        n = int(query)
    except ValueError:
        raise ValueError(f"Corpus spec {spec!r}: chars={query!r} is not a whole number of characters.") from None
    if n < MIN_SLICE_CHARS:
        raise ValueError(f"Corpus spec {spec!r}: chars={n} is too short; keep at least {MIN_SLICE_CHARS} characters.")
    return base, n


def load_corpus(
    spec: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Load the corpus named by ``spec`` as one string (see the module docstring for specs).

    ``progress(done_bytes, total_bytes)`` is called while Tiny Shakespeare downloads;
    ``cache_dir`` overrides where downloads are kept. Raises ``ValueError`` for an unknown spec,
    a missing/empty/binary/non-UTF-8/too large file, or a failed download.
    """
    if isinstance(spec, os.PathLike):
        return _read_corpus_file(Path(spec).expanduser())
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"Corpus spec {spec!r} is empty or not text; use one of: {VALID_FORMS}.")
    base, chars = _split_slice(spec)
    if chars is not None:
        return load_corpus(base, progress=progress, cache_dir=cache_dir)[:chars]
    if spec in _BUILTIN_LOADERS:
        return _BUILTIN_LOADERS[spec]()
    if spec.startswith("builtin:"):
        raise ValueError(
            f"Unknown built-in corpus {spec!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}."
        )
    if spec == TINY_SHAKESPEARE:
        return load_tiny_shakespeare(progress=progress, cache_dir=cache_dir)
    if spec.startswith(SYNTHETIC_PREFIX):
        return _load_synthetic(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _read_corpus_file(path)
    raise ValueError(
        f"Corpus {spec!r} is not a file that exists, nor a known corpus; use one of: "
        f"{VALID_FORMS}."
    )
