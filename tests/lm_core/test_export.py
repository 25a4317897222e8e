"""Export bundles round-trip and refuse what is not a bundle."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest
import torch

import lm_core
from lm_core.export import bundle_bytes, read_bundle, write_bundle


def test_bundle_round_trip(tmp_path):
    cfg = lm_core.ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = lm_core.GPT(cfg)
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    history = pd.DataFrame({"step": [10, 20], "train_loss": [2.5, 2.1], "val_loss": [float("nan"), 2.2]})
    figures = {"attention.html": b"<html>fig</html>", "attention.png": b"\x89PNG\r\n\x1a\nxx"}
    path = write_bundle(
        tmp_path / "out" / "bundle.zip", config={"model": cfg.to_dict()}, history=history,
        figures=figures, cache=cache, meta={"text": "abc", "model_name": "tiny"},
    )
    b = read_bundle(path)
    assert b.config["model"] == cfg.to_dict()
    pd.testing.assert_frame_equal(b.history, history)
    assert b.figures == figures
    assert set(b.cache) == set(cache)
    for k in cache:
        torch.testing.assert_close(b.cache[k], cache[k])
    assert b.meta["text"] == "abc"
    assert "cache.safetensors" in b.readme and "figures/attention.png" in b.readme
    assert read_bundle(bundle_bytes(config={"a": 1})).config == {"a": 1}
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_bad_bundles(tmp_path):
    with pytest.raises(ValueError, match="not a readable zip"):
        read_bundle(b"not a zip")
    p = tmp_path / "foreign.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match="not an LM Lens bundle"):
        read_bundle(p)
    with pytest.raises(ValueError, match="figure file name"):
        write_bundle(tmp_path / "x.zip", config={}, figures={"../evil.html": b""})
