"""Corpora: built-in, synthetic tasks, files and uploads, and the checked, cached download."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lm_core import corpora
from lm_core.corpora import (
    BUILTIN_CORPORA,
    SYNTHETIC_TASKS,
    corpus_from_bytes,
    corpus_from_text,
    corpus_stats,
    default_cache_dir,
    download_text,
    generate_synthetic,
    list_synthetic_tasks,
    load_corpus,
)

# ----------------------------------------------------------------------------- built-in


def test_builtin_python_docs() -> None:
    text = load_corpus("builtin:python-docs")
    assert len(text.encode("utf-8")) > 300_000
    assert "\x00" not in text
    assert "for" in text and "while" in text
    assert load_corpus("builtin:python-docs") == text  # stable
    assert set(BUILTIN_CORPORA) == {"builtin:python-docs"}


def test_unknown_builtin_and_unknown_spec() -> None:
    with pytest.raises(ValueError, match="builtin:python-docs"):
        load_corpus("builtin:wikipedia")
    forms = r"no-such-corpus.*builtin:python-docs.*tiny-shakespeare.*synthetic:"
    with pytest.raises(ValueError, match=forms):
        load_corpus("no-such-corpus")
    with pytest.raises(ValueError, match="empty"):
        load_corpus("  ")


def test_corpus_stats() -> None:
    assert corpus_stats("ab\nbé\n") == {"chars": 6, "distinct_chars": 4, "lines": 2, "bytes": 7}
    assert corpus_stats("a\nb")["lines"] == 2
    assert corpus_stats("")["lines"] == 0


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("task", list_synthetic_tasks())
def test_synthetic_task_loads_and_is_seeded(task: str) -> None:
    text = load_corpus(f"synthetic:{task}")
    assert 250_000 <= len(text) <= 600_000
    assert "\x00" not in text
    # n counts lines, except for induction: one unbroken stream of letters, n counts its segments
    assert text.endswith("\n") == (task != "induction")
    assert load_corpus(f"synthetic:{task}") == text  # deterministic, default seed 0
    assert load_corpus(f"synthetic:{task}?seed=0") == text
    small = load_corpus(f"synthetic:{task}?n=300&seed=3")
    if task == "induction":
        import random

        assert len(corpora.induction_segments(300, random.Random(3))) == 300
        assert small == "".join(t for _, t in corpora.induction_segments(300, random.Random(3)))
    else:
        assert small.count("\n") == 300
    assert small == load_corpus(f"synthetic:{task}?seed=3&n=300")
    assert small != load_corpus(f"synthetic:{task}?n=300&seed=4")
    info = SYNTHETIC_TASKS[task]
    assert info.name == task and len(info.description) > 40 and info.example


def test_list_synthetic_tasks() -> None:
    assert list_synthetic_tasks() == [
        "induction", "copy", "reverse", "sort", "modular-addition", "brackets",
    ]


def _lines(task: str, n: int = 2000, seed: int = 1) -> list[str]:
    return generate_synthetic(task, n=n, seed=seed).splitlines()


def test_induction_stream_is_repeats_and_trigram_chains() -> None:
    import random

    text = generate_synthetic("induction", n=3000, seed=1)
    assert text.isalpha() and text.islower()  # one unbroken stream: no separators, no other tokens
    segs = corpora.induction_segments(3000, random.Random(1))
    assert "".join(t for _, t in segs) == text
    repeats = [t for k, t in segs if k == "repeat"]
    chains = [t for k, t in segs if k == "chain"]
    assert 0.65 < len(repeats) / len(segs) < 0.75
    runs = set()
    for t in repeats:  # a run of 5-14 letters, written twice
        half = len(t) // 2
        assert len(t) % 2 == 0 and t[:half] == t[half:] and 5 <= half <= 14
        runs.add(half)
    assert runs == set(range(5, 15))
    assert any(len(set(t[: len(t) // 2])) < len(t) // 2 for t in repeats)  # drawn with replacement
    assert all(10 <= len(t) <= 28 for t in chains)
    # chains follow one trigram table: the most common next letter after each pair explains ~90%
    follow: dict[str, dict[str, int]] = {}
    for t in chains:
        for i in range(2, len(t)):
            d = follow.setdefault(t[i - 2 : i], {})
            d[t[i]] = d.get(t[i], 0) + 1
    top = sum(max(d.values()) for d in follow.values())
    assert top / sum(sum(d.values()) for d in follow.values()) > 0.85


@pytest.mark.parametrize(
    ("task", "rule"),
    [
        ("copy", lambda a: a),
        ("reverse", lambda a: a[::-1]),
        ("sort", lambda a: "".join(sorted(a))),
    ],
)
def test_string_tasks_follow_their_rule(task: str, rule) -> None:
    for line in _lines(task):
        a, b = line.split("|")
        assert a.isalpha() and 3 <= len(a) <= 12 and b == rule(a)


def test_modular_addition_is_correct_and_holds_out_its_tail() -> None:
    lines = _lines("modular-addition", n=5000)
    problems = []
    for line in lines:
        m = re.fullmatch(r"(\d+)\+(\d+)=(\d+)", line)
        assert m, line
        a, b, c = map(int, m.groups())
        assert 0 <= a < 97 and 0 <= b < 97 and c == (a + b) % 97
        problems.append((a, b))
    head, tail = problems[:4500], problems[4500:]
    assert not set(head) & set(tail)  # the validation tail is unseen problems


def test_brackets_labels_are_right_and_mixed() -> None:
    labels = []
    for line in _lines("brackets"):
        s, label = line.split("=")
        assert set(s) <= {"(", ")"} and s
        depth, ok = 0, True
        for ch in s:
            depth += 1 if ch == "(" else -1
            ok = ok and depth >= 0
        assert label == ("yes" if ok and depth == 0 else "no")
        labels.append(label)
    assert 0.4 < labels.count("yes") / len(labels) < 0.6


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("synthetic:telepathy", r"telepathy.*induction.*brackets"),
        ("synthetic:", "valid tasks"),
        ("synthetic:copy?x=1", "bad parameter"),
        ("synthetic:copy?n", "bad parameter"),
        ("synthetic:copy?n=abc", "not a whole number"),
        ("synthetic:copy?n=0", "out of range"),
        ("synthetic:copy?n=5&n=6", "twice"),
        ("synthetic:copy?seed=-1", "negative"),
    ],
)
def test_bad_synthetic_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_corpus(spec)


# ----------------------------------------------------------------------------- files


def test_file_path_loads(tmp_path: Path) -> None:
    path = tmp_path / "my corpus.txt"
    path.write_bytes("\ufeffhello wörld\r\nsecond line\n".encode())
    assert load_corpus(str(path)) == "hello wörld\nsecond line\n"  # BOM dropped, CRLF -> LF
    assert load_corpus(path) == "hello wörld\nsecond line\n"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b" \n\t\n", "empty"),
        (b"hello\x00world", "binary"),
        (b"caf\xe9 au lait", r"not UTF-8.*0xE9"),
    ],
)
def test_bad_files(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    for spec in (str(path), path):
        with pytest.raises(ValueError, match=match) as info:
            load_corpus(spec)
        assert "bad.txt" in str(info.value)
    with pytest.raises(ValueError, match=match):
        corpus_from_bytes(data, "upload.txt")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.txt"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match=r"missing\.txt.*does not exist"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="folder"):
        load_corpus(str(tmp_path))


def test_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "MAX_CORPUS_BYTES", 10)
    path = tmp_path / "big.txt"
    path.write_text("x" * 100, encoding="utf-8")
    with pytest.raises(ValueError, match=r"big\.txt.*100 bytes.*limit"):
        load_corpus(str(path))
    with pytest.raises(ValueError, match="limit"):
        corpus_from_bytes(b"x" * 11, "upload.txt")
    with pytest.raises(ValueError, match="limit"):
        corpus_from_text("x" * 11)
    assert corpus_from_text("x" * 10) == "x" * 10


def test_corpus_from_text() -> None:
    assert corpus_from_text("a\r\nb") == "a\nb"
    with pytest.raises(ValueError, match="pasted text is empty"):
        corpus_from_text("   ")
    with pytest.raises(ValueError, match="my paste"):
        corpus_from_text("", "my paste")


# ----------------------------------------------------------------------------- Tiny Shakespeare


@pytest.fixture
def no_tiny_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("LM_LENS_TINY_SHAKESPEARE", raising=False)
    monkeypatch.delenv("LM_LENS_TINY_SHAKESPEARE_URL", raising=False)
    # as a library installed without the shipped assets: the download path
    monkeypatch.setattr(corpora, "SHIPPED_TINY_SHAKESPEARE", Path("/nonexistent/tinyshakespeare.txt.xz"))
    return monkeypatch


def test_tiny_shakespeare_ships_with_the_app_and_loads_offline(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.delenv("LM_LENS_TINY_SHAKESPEARE", raising=False)
    monkeypatch.setenv("LM_LENS_TINY_SHAKESPEARE_URL", _closed_port_url())  # no network
    assert corpora.SHIPPED_TINY_SHAKESPEARE.is_file()
    assert corpora.SHIPPED_TINY_SHAKESPEARE.stat().st_size < 400_000  # compressed in the repo
    text = load_corpus("tiny-shakespeare", cache_dir=tmp_path)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == corpora.TINY_SHAKESPEARE_SHA256
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    assert not any(tmp_path.iterdir())  # nothing downloaded or cached


def test_damaged_shipped_copy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lzma

    monkeypatch.delenv("LM_LENS_TINY_SHAKESPEARE", raising=False)
    bad = tmp_path / "ts.txt.xz"
    bad.write_bytes(lzma.compress(b"First Citizen:\nnot the real text\n"))
    monkeypatch.setattr(corpora, "SHIPPED_TINY_SHAKESPEARE", bad)
    with pytest.raises(ValueError, match=r"does not match its checksum.*download a fresh copy"):
        load_corpus("tiny-shakespeare")
    bad.write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match=r"is damaged"):
        load_corpus("tiny-shakespeare")


def test_fresh_copy_downloads_even_with_the_shipped_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         server) -> None:
    text = BODY.decode("utf-8")
    monkeypatch.setenv("LM_LENS_TINY_SHAKESPEARE_URL", f"{server.url}/input.txt")
    monkeypatch.setattr(corpora, "TINY_SHAKESPEARE_SHA256", BODY_SHA)
    (tmp_path / corpora.TINY_SHAKESPEARE_FILENAME).write_text("an old cached copy", encoding="utf-8")
    assert corpora.load_tiny_shakespeare(cache_dir=tmp_path, fresh=True) == text
    assert (tmp_path / corpora.TINY_SHAKESPEARE_FILENAME).read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [corpora.TINY_SHAKESPEARE_FILENAME]


def test_tiny_shakespeare_env_file(no_tiny_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = tmp_path / "input.txt"
    local.write_text("First Citizen:\nSpeak.\n", encoding="utf-8")
    no_tiny_env.setenv("LM_LENS_TINY_SHAKESPEARE", str(local))
    assert load_corpus("tiny-shakespeare") == "First Citizen:\nSpeak.\n"
    no_tiny_env.setenv("LM_LENS_TINY_SHAKESPEARE", str(tmp_path / "gone.txt"))
    with pytest.raises(ValueError, match=r"LM_LENS_TINY_SHAKESPEARE.*gone\.txt.*does not exist"):
        load_corpus("tiny-shakespeare")


def test_real_tiny_shakespeare_if_available() -> None:
    path = os.environ.get("LM_LENS_TINY_SHAKESPEARE")
    if not path:
        pytest.skip("LM_LENS_TINY_SHAKESPEARE is not set")
    text = load_corpus("tiny-shakespeare")
    assert len(text) == 1_115_394 and len(set(text)) == 65
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert digest == corpora.TINY_SHAKESPEARE_SHA256


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LM_LENS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LM_LENS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "lm_lens"


# ----------------------------------------------------------------------------- download

BODY = ("To be, or not to be, that is the question:\n" * 4000).encode()  # ~170 KB, several chunks
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/input.txt":
            self._send(200, BODY, len(BODY))
        elif self.path == "/truncated.txt":
            self._send(200, BODY[:1000], len(BODY))  # promise more than we send, then close
        else:
            self._send(404, b"not found", 9)

    def _send(self, status: int, body: bytes, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


class _Server:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.running = False


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.stop()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"  # nobody listens there now


def test_download_checks_reports_progress_and_caches(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "input.txt"
    calls: list[tuple[int, int | None]] = []
    text = download_text(
        f"{server.url}/input.txt", dest, sha256=BODY_SHA, progress=lambda d, t: calls.append((d, t))
    )
    assert text == BODY.decode()
    assert dest.read_bytes() == BODY
    assert calls[0] == (0, len(BODY)) and calls[-1] == (len(BODY), len(BODY))
    assert len(calls) > 2 and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert [p.name for p in dest.parent.iterdir()] == ["input.txt"]  # no temp file left

    server.stop()  # the cached copy is used without the network
    calls.clear()
    again = download_text(
        f"{server.url}/input.txt", dest, sha256=BODY_SHA, progress=lambda d, t: calls.append((d, t))
    )
    assert again == text and calls == [(len(BODY), len(BODY))]


def test_download_replaces_a_damaged_cache(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "input.txt"
    dest.write_text("damaged", encoding="utf-8")
    assert download_text(f"{server.url}/input.txt", dest, sha256=BODY_SHA) == BODY.decode()
    assert dest.read_bytes() == BODY


def test_download_404(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HTTP 404"):
        download_text(f"{server.url}/missing.txt", tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []


def test_download_truncated(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"cut off after 1,000 of {len(BODY):,} bytes.*try again"):
        download_text(f"{server.url}/truncated.txt", tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []


def test_download_checksum_mismatch(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"sha256 {BODY_SHA}, expected 0000"):
        download_text(f"{server.url}/input.txt", tmp_path / "x.txt", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_too_large(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpora, "MAX_CORPUS_BYTES", 1000)
    with pytest.raises(ValueError, match="limit"):
        download_text(f"{server.url}/input.txt", tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []


def test_download_unreachable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Could not reach .*offline"):
        download_text(_closed_port_url(), tmp_path / "x.txt", timeout=5)


def test_tiny_shakespeare_download_via_url_override(
    server: _Server, no_tiny_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_tiny_env.setenv("LM_LENS_TINY_SHAKESPEARE_URL", f"{server.url}/input.txt")
    no_tiny_env.setattr(corpora, "TINY_SHAKESPEARE_SHA256", BODY_SHA)
    calls: list[tuple[int, int | None]] = []
    text = load_corpus(
        "tiny-shakespeare", cache_dir=tmp_path, progress=lambda d, t: calls.append((d, t))
    )
    assert text == BODY.decode() and calls[-1] == (len(BODY), len(BODY))
    server.stop()
    assert load_corpus("tiny-shakespeare", cache_dir=tmp_path) == text


def test_tiny_shakespeare_offline_message(no_tiny_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_tiny_env.setenv("LM_LENS_TINY_SHAKESPEARE_URL", _closed_port_url())
    hint = r"offline\?.*LM_LENS_TINY_SHAKESPEARE.*builtin:python-docs"
    with pytest.raises(ValueError, match=hint):
        load_corpus("tiny-shakespeare", cache_dir=tmp_path)


def test_tiny_shakespeare_checksum_is_enforced(
    server: _Server, no_tiny_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_tiny_env.setenv("LM_LENS_TINY_SHAKESPEARE_URL", f"{server.url}/input.txt")
    with pytest.raises(ValueError, match=corpora.TINY_SHAKESPEARE_SHA256):
        load_corpus("tiny-shakespeare", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
