"""The head-metric registry (lm_core.metrics): each metric is declared once and everything that
shows head scores reads it — the trainer's probe, scores on a text, the app's tables and panels.
A metric registered for the duration of a test shows up in all of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lm_core
from lm_core import analysis, metrics
from lm_core.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def model() -> lm_core.GPT:
    torch.manual_seed(0)
    return lm_core.GPT(lm_core.ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def test_every_metric_is_declared_completely():
    assert list(metrics.HEAD_METRICS)[:4] == ["induction", "previous_token", "duplicate_token", "entropy"]
    for name, m in metrics.HEAD_METRICS.items():
        assert m.name == name and m.label and m.help and m.direction in ("high", "low")
        assert m.value_range is None or m.value_range[0] < m.value_range[1]
    assert metrics.head_metric("entropy").direction == "low"  # low entropy = focused
    with pytest.raises(ValueError, match="already registered"):
        metrics.register(metrics.HEAD_METRICS["induction"])
    with pytest.raises(ValueError, match="unknown head metric 'nope'"):
        metrics.head_metric("nope")
    with pytest.raises(ValueError, match="direction"):
        metrics.HeadMetric("x", "x", lambda p: p.patterns, None, "up", "x")


def test_values_stay_in_their_declared_range(model):
    scores = metrics.probe_head_scores(model, seq_len=6)
    assert list(scores) == metrics.metric_names()
    for name, z in scores.items():
        assert z.shape == (2, 2)
        lo, hi = metrics.head_metric(name).value_range or (0.0, float("inf"))
        assert bool(((z >= lo - 1e-6) & (z <= hi + 1e-6)).all()), name


def test_attention_sink_is_the_share_on_the_first_position():
    T = 5
    sink = torch.zeros(T, T)
    sink[:, 0] = 1.0                                     # every query on position 0
    uniform = torch.ones(T, T).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)    # row i: 1 / (i + 1) on each key
    p = torch.stack([torch.stack([sink, uniform])])      # (L=1, H=2, T, T)
    z = metrics.attention_sink(p)
    assert z[0, 0].item() == pytest.approx(1.0)
    assert z[0, 1].item() == pytest.approx(np.mean([1 / (i + 1) for i in range(1, T)]))  # row 0 left out
    assert metrics.score_patterns(p, list(range(T)), names=["attention_sink"])["attention_sink"].shape == (1, 2)


def test_strongest_follows_the_direction():
    assert metrics.head_metric("induction").strongest([0.1, 0.9, float("nan")]) == 1
    assert metrics.head_metric("entropy").strongest([0.1, 0.9, float("nan")]) == 0


def test_old_analysis_names_still_work(model):
    ids = [1, 2, 3, 1, 2, 3]
    assert analysis.probe_head_scores is metrics.probe_head_scores
    a = analysis.all_head_scores(model, ids)
    assert list(a) == metrics.metric_names()
    torch.testing.assert_close(a["induction"], analysis.head_scores(model.run_with_cache(torch.tensor([ids]))[1],
                                                                     ids, "induction"))
    # induction_score is the registry's induction metric on the repeated probe
    torch.testing.assert_close(metrics.induction_score(model, seq_len=6, seed=2, batch=2),
                               metrics._probe(model, 6, 2, 2, 2, None, None)["induction"])


def _focus_metric() -> metrics.HeadMetric:
    """A metric that exists only inside the test: attention on the current token (the diagonal)."""
    return metrics.HeadMetric("self_attention", "self", lambda p: p.patterns.diagonal(dim1=-2, dim2=-1).mean(-1),
                              (0.0, 1.0), "high", "attention on the token itself")


def test_a_metric_registered_once_reaches_every_consumer(model, tmp_path):
    from app.core import circuits, inspection

    text = "abcdefghij" * 40
    tok = CharTokenizer.train(text)
    with metrics.registered(_focus_metric()):
        # the trainer's record (via analysis.probe_head_scores, untouched)
        torch.manual_seed(0)
        m = lm_core.GPT(lm_core.ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
        tc = lm_core.TrainConfig(batch_size=2, max_steps=2, eval_interval=2, eval_iters=1, log_interval=1,
                                 warmup_steps=0, checkpoint_interval=2)
        tr = lm_core.Trainer(m, tok, text, tc)
        tr.step()
        tr.step()
        assert {"self_attention", "attention_sink"} <= set(tr.head_scores["kind"])
        # the Circuits panel's kinds, the Attention overview's scores and its CSV export
        assert "self_attention" in circuits.kinds_in(tr.head_scores)
        ins = inspection.inspect(model, [1, 2, 3, 4])
        assert ins["score/self_attention"].shape == (2, 2)
        assert "self_attention" in inspection.scores_table(ins).columns
    assert "self_attention" not in metrics.HEAD_METRICS
