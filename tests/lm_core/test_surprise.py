"""Where the model is surprised: per-token losses equal a hand computation from the logits,
long texts slide their window, the baseline lines up, errors are plain sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lm_core
from lm_core import GPT, ModelConfig
from lm_core.ngram import fit_ngrams
from lm_core.surprise import _windows, compare_surprise, model_surprise, ngram_surprise, surprise

torch.set_num_threads(1)

TEXT = "the cat sat on the mat. the cat sat on the hat. "


@pytest.fixture(scope="module")
def tok():
    return lm_core.CharTokenizer.train(TEXT)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    with torch.no_grad():
        m.wte.weight.mul_(10)   # a peaked distribution, so top-k means something
    return m


def _by_hand(model, ids, t, block_size):
    """−ln p(ids[t] | the up-to-block_size tokens before it), from one forward of that window."""
    ctx = torch.tensor(ids[max(0, t - block_size):t])[None]
    with torch.no_grad():
        logits = model.eval()(ctx)[0, -1]
    return float(-torch.log_softmax(logits.double(), -1)[ids[t]])


def test_short_text_losses_equal_the_cross_entropy_of_one_forward(model, tok):
    text = "the cat"
    s = surprise(model, tok, text, top_k=3)
    ids = tok.encode(text)
    with torch.no_grad():
        logits = model.eval()(torch.tensor(ids)[None])[0]                 # (T, V)
    ce = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    np.testing.assert_allclose(s.losses, ce.numpy(), rtol=1e-5, atol=1e-6)
    assert s.losses.dtype == np.float32 and s.losses.shape == (len(ids) - 1,)
    assert s.mean_nats == pytest.approx(float(ce.mean()), rel=1e-5)
    assert s.total_nats == pytest.approx(float(ce.sum()), rel=1e-5)
    # one token per character: bits per character = nats per token / ln 2
    assert s.bits_per_char == pytest.approx(s.mean_nats / math.log(2) * len(ids) / len(text))
    np.testing.assert_allclose(s.true_probs, np.exp(-ce.numpy()), rtol=1e-5)
    # top-k: sorted, the real argmax first, probabilities of the model at temperature 1
    probs = torch.softmax(logits[:-1], -1)
    assert (s.top_ids[:, 0] == probs.argmax(-1).numpy()).all()
    np.testing.assert_allclose(s.top_probs[:, 0], probs.max(-1).values.numpy(), rtol=1e-5)
    assert (np.diff(s.top_probs, axis=1) <= 1e-7).all()
    assert s.pieces == tok.pieces(ids) and s.top_pieces[0] == tok.pieces(s.top_ids[0].tolist())
    assert s.alternatives(2)[0][0] == (s.top_pieces[0][0], pytest.approx(float(s.top_probs[0, 0])))


def test_dropout_is_off_and_the_training_mode_is_restored(model, tok):
    model.train()
    a = surprise(model, tok, TEXT[:8])
    b = surprise(model, tok, TEXT[:8])
    assert model.training
    np.testing.assert_array_equal(a.losses, b.losses)


@pytest.mark.parametrize("stride", [1, 3, None])
def test_long_text_slides_the_window_and_scores_every_token_once(model, tok, stride):
    ids = tok.encode(TEXT)                       # 48 tokens, block_size 8
    s = model_surprise(model, ids, top_k=2, stride=stride)
    assert s.losses.shape == (len(ids) - 1,)
    B = 8
    for t in range(1, len(ids)):
        if stride == 1 or t <= B:
            # full context: the last block_size tokens (all of them near the start)
            assert s.losses[t - 1] == pytest.approx(_by_hand(model, ids, t, B), rel=1e-4, abs=1e-5)
    # every position is covered exactly once, with at least block_size - stride + 1 tokens seen
    st = B // 2 if stride is None else stride
    seen = np.zeros(len(ids) - 1, dtype=int)
    for s0, first, end in _windows(len(ids), B, st):
        assert end - s0 <= B
        seen[first:end] += 1
        if s0 > 0:
            assert first - s0 + 1 >= B - st + 1
    assert (seen == 1).all()


def test_windowed_losses_match_a_hand_computation_with_their_own_window(model, tok):
    ids = tok.encode(TEXT)
    s = model_surprise(model, ids, stride=4)
    for s0, first, end in _windows(len(ids), 8, 4):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor(ids[s0:s0 + 8])[None])[0].double(), -1)
        for p in range(first, end):
            assert s.losses[p] == pytest.approx(float(-lp[p - s0, ids[p + 1]]), rel=1e-4, abs=1e-5)


def test_one_token_and_empty_texts_are_refused_and_unknown_characters_become_unk(model, tok):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        surprise(model, tok, "t")
    with pytest.raises(ValueError, match="empty"):
        surprise(model, tok, "")
    s = surprise(model, tok, "the 🦜 cat")
    assert "⟨unk⟩" in s.pieces and np.isfinite(s.losses).all()
    with pytest.raises(ValueError, match="stride"):
        model_surprise(model, [1, 2, 3], stride=0)


def test_bigram_surprise_lines_up_with_the_ngram_model_and_the_comparison_is_a_difference(model, tok):
    ng = fit_ngrams(tok.encode(TEXT * 3), tok.vocab_size, max_n=3)
    text = "the hat sat on the cat."
    ids = tok.encode(text)
    b = ngram_surprise(ng, ids, n=2, top_k=4, tokenizer=tok, n_chars=len(text))
    assert b.name == "bigram Markov chain"
    np.testing.assert_allclose(b.losses, ng.token_losses(ids, 2), rtol=1e-6)
    for i in (0, 5, len(ids) - 2):
        p = ng.next_token_probs(ids[:i + 1], 2)
        top = np.argsort(-p, kind="stable")[:4]
        np.testing.assert_allclose(b.top_probs[i], p[top], rtol=1e-6)
        assert set(b.top_ids[i]) == set(top) or np.allclose(np.sort(p[b.top_ids[i]]), np.sort(p[top]))
    for n in (1, 3):  # other orders, chunk boundaries included
        o = ngram_surprise(ng, ids, n=n, top_k=2)
        np.testing.assert_allclose(o.losses, ng.token_losses(ids, n), rtol=1e-6)

    c = compare_surprise(model, tok, text, ng, n=2, top_k=3)
    assert c.model.name == "transformer" and c.baseline.name == "bigram Markov chain"
    np.testing.assert_allclose(c.gain, c.baseline.losses - c.model.losses, rtol=1e-6)
    assert c.gain.dtype == np.float32 and len(c.gain) == len(ids) - 1
    best = c.helps_most(3)
    assert c.gain[best[0]] == c.gain.max()

    other = fit_ngrams([0, 1, 2], 3, max_n=2)
    with pytest.raises(ValueError, match="vocabulary"):
        compare_surprise(model, tok, text, other)


def test_ngram_surprise_handles_many_chunks(tok, monkeypatch):
    import lm_core.surprise as S

    ng = fit_ngrams(tok.encode(TEXT * 3), tok.vocab_size, max_n=4)
    ids = tok.encode(TEXT)
    whole = ngram_surprise(ng, ids, n=4, top_k=3)
    monkeypatch.setattr(S, "_NGRAM_CELLS", tok.vocab_size * 5)   # 5 rows per chunk
    chunked = ngram_surprise(ng, ids, n=4, top_k=3)
    np.testing.assert_array_equal(whole.top_probs, chunked.top_probs)
    np.testing.assert_array_equal(whole.losses, chunked.losses)
