"""lm_core.hub: which files a load needs, what the cache holds, a download that reports progress
and can be cancelled, against the fake hub of ``tests/fakehub.py`` (no network)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import lm_core
from lm_core import hub

pytest.importorskip("transformers", reason="transformers is not installed (optional extra)")
from fakehub import FakeHub, closed_port, go_offline, point_hub_at, serving, stop, tiny_gpt2_repo  # noqa: E402

REPO = "tiny-org/tiny-gpt2"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_gpt2_repo(tmp_path_factory.mktemp("dl-gpt2"))


@pytest.fixture
def fake(repo, tmp_path, monkeypatch):
    files, _, _ = repo
    with serving(FakeHub({REPO: {"main": dict(files, **{"README.md": b"# a model card"})}})) as server:
        point_hub_at(monkeypatch, tmp_path, server.url)
        yield server


def test_files_to_fetch_are_what_loading_reads():
    assert hub.files_to_fetch(["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
                               "README.md", "vocab.json", "merges.txt"]) == \
        ["config.json", "model.safetensors", "tokenizer.json"]
    sharded = ["config.json", "generation_config.json", "model.safetensors.index.json",
               "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors", "vocab.json", "merges.txt"]
    assert hub.files_to_fetch(sharded) == ["config.json", "generation_config.json", "model.safetensors.index.json",
                                           "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                           "vocab.json", "merges.txt"]
    assert hub.files_to_fetch(["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"]
    with pytest.raises(ValueError, match="no config.json"):
        hub.files_to_fetch(["model.safetensors"])
    with pytest.raises(ValueError, match="no weights"):
        hub.files_to_fetch(["config.json", "tokenizer.json"])


def test_download_reports_progress_then_loads_with_the_hub_gone(fake, repo):
    files, hf, _ = repo
    p = hub.plan(REPO)
    assert [f for f, _ in p.files] == ["config.json", "model.safetensors", "tokenizer.json"]  # no README
    assert p.total_bytes == sum(len(files[f]) for f, _ in p.files)
    assert hub.cached_snapshot(REPO) is None

    seen: list[hub.Progress] = []
    folder = hub.download(REPO, on_progress=seen.append)
    assert folder == hub.cached_snapshot(REPO) and (folder / "model.safetensors").is_file()
    done = [s.done_bytes for s in seen]
    assert done == sorted(done) and seen[-1].done_bytes == p.total_bytes == seen[-1].total_bytes
    assert seen[-1].fraction == 1.0 and seen[-1].files_done == seen[-1].files_total == 3
    assert {s.filename for s in seen} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert not any(q.endswith("/README.md") for q in fake.paths())

    stop(fake)  # offline from now on: the cached model opens, fast, without a request
    asked = len(fake.log)
    t0 = time.perf_counter()
    assert hub.download(REPO) == folder
    model, tok = lm_core.load_pretrained(REPO)
    assert time.perf_counter() - t0 < 5 and len(fake.log) == asked
    ids = torch.tensor([tok.encode("the cat")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def cancel_half_way(server) -> BaseException | None:
    """Download REPO in a thread, cancel it while the weights are half sent; what it raised."""
    server.hold.clear()  # the weights stop half-way until released
    cancel = threading.Event()
    out: dict = {}

    def run():
        try:
            hub.download(REPO, cancel=cancel)
        except BaseException as e:  # noqa: BLE001  (what the worker saw)
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    assert server.holding.wait(20), server.log
    cancel.set()
    server.hold.set()
    t.join(20)
    return out.get("error")


def test_cancel_stops_the_download_and_leaves_no_model(fake):
    assert isinstance(cancel_half_way(fake), hub.DownloadCancelled)
    assert hub.cached_snapshot(REPO) is None
    # the next try completes (the finished config.json is not fetched again)
    gets = len([q for q in fake.paths("GET") if q.endswith("/config.json")])
    assert hub.download(REPO) == hub.cached_snapshot(REPO)
    assert len([q for q in fake.paths("GET") if q.endswith("/config.json")]) == gets


def test_a_cancel_set_before_the_start_fetches_nothing(fake):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(hub.DownloadCancelled):
        hub.download(REPO, cancel=cancel)
    assert not any("/resolve/" in q for q in fake.paths("GET"))


def test_offline_and_uncached_is_one_sentence(tmp_path, monkeypatch):
    point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{closed_port()}")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"'tiny-org/tiny-gpt2' is not in the local cache and the hub at "
                                         r"127\.0\.0\.1:\d+ .* cannot be reached, so it cannot be downloaded now"):
        hub.download(REPO)
    assert time.perf_counter() - t0 < 5
    go_offline(monkeypatch)
    assert hub.hub_unavailable() == "HF_HUB_OFFLINE is set"
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set, so its size cannot be looked up"):
        hub.fetch_config(REPO)


def test_fetch_config_reads_only_the_config(fake, repo):
    cfg = hub.fetch_config(REPO)
    assert cfg["model_type"] == "gpt2" and cfg["n_layer"] == 2
    assert [q.rsplit("/", 1)[1] for q in fake.paths("GET") if "/resolve/" in q] == ["config.json"]
    with pytest.raises(ValueError, match="no-such/model"):
        hub.fetch_config("no-such/model")


def test_stoppable_downloads_turns_xet_off_unless_the_environment_chose(monkeypatch):
    """Xet storage's transfer engine cannot be stopped between chunks; a program with a Cancel
    button asks for plain HTTP, unless HF_HUB_DISABLE_XET was set by the person running it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    assert hub.stoppable_downloads() is True and constants.HF_HUB_DISABLE_XET is True
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "0")  # chosen: left alone
    assert hub.stoppable_downloads() is False and constants.HF_HUB_DISABLE_XET is False


def test_a_file_kept_in_xet_storage_downloads_and_cancels_over_http(repo, tmp_path, monkeypatch):
    """The hub keeps most weights in Xet storage; with stoppable_downloads() they come over plain
    HTTP, where Cancel stops them half-way, and the next try completes."""
    from huggingface_hub import constants

    files, _, _ = repo
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    with serving(FakeHub({REPO: {"main": files}}, xet=True)) as server:
        point_hub_at(monkeypatch, tmp_path, server.url)
        assert hub.stoppable_downloads()
        assert isinstance(cancel_half_way(server), hub.DownloadCancelled)
        assert hub.cached_snapshot(REPO) is None
        assert hub.download(REPO) == hub.cached_snapshot(REPO)
        assert not any("xet-read-token" in q for q in server.paths())  # Xet's engine was never asked
