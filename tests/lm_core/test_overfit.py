"""Over-fitting, visible and cured: the ``overfit`` preset's val loss turns up while its train loss
keeps falling; ``overfit-cured`` stops early and keeps the best step's weights. Also the corpus
slice the presets train on (``tiny-shakespeare?chars=N``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_core import runs as lm_runs
from lm_core.corpora import load_corpus
from lm_core.presets import PRESETS
from lm_core.recipes import build_trainer


def test_corpus_slice_is_the_first_characters():
    full = load_corpus("tiny-shakespeare")
    assert load_corpus("tiny-shakespeare?chars=3000") == full[:3000]
    assert load_corpus("builtin:python-docs?chars=500") == load_corpus("builtin:python-docs")[:500]
    with pytest.raises(ValueError, match="not a whole number"):
        load_corpus("tiny-shakespeare?chars=lots")
    with pytest.raises(ValueError, match="too short"):
        load_corpus("tiny-shakespeare?chars=5")


def _train(preset: str, steps: int, tmp_path=None):
    threads = torch.get_num_threads()
    try:
        tr = build_trainer(preset=preset, run_dir=tmp_path,
                           train_overrides=dict(max_steps=steps, num_threads=1, sample_tokens=0, snapshots=0))
        tr.run()
    finally:
        torch.set_num_threads(threads)
    return tr


def test_overfit_preset_val_rises_while_train_falls():
    """~250 steps of the ``overfit`` preset (about 15 s on one thread): the val curve has a minimum
    early and ends well above it, while the train loss at the end is far below its value there."""
    tr = _train("overfit", 250)
    h = tr.history
    ev = h.dropna(subset=["val_loss"])
    best = int(ev["val_loss"].to_numpy().argmin())
    best_step, best_val = int(ev["step"].iloc[best]), float(ev["val_loss"].iloc[best])
    final_val = float(ev["val_loss"].iloc[-1])
    assert best_step < int(ev["step"].iloc[-1]) and final_val > best_val + 0.3, (best_step, best_val, final_val)
    train = h.dropna(subset=["train_loss"])
    at_best = float(train[train["step"] <= best_step]["train_loss"].tail(5).mean())
    at_end = float(train["train_loss"].tail(5).mean())
    assert at_end < at_best - 0.5, (at_best, at_end)
    assert np.isfinite(h["train_loss"].dropna()).all()


def test_cured_preset_has_dropout_and_early_stopping():
    p = PRESETS["overfit-cured"]
    assert p.corpus == PRESETS["overfit"].corpus and p.model["dropout"] > 0
    assert p.train["early_stopping_patience"] >= 1
