"""N-gram baselines: hand-computed losses, normalisation, back-off, the trainer's units."""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

import lm_core
from lm_core.data import split_text
from lm_core.ngram import NGRAM_NAMES, baseline_losses, fit_ngrams, ngram_name, passed_at, score_baselines

# "ab" repeated, vocabulary {a: 0, b: 1, c: 2}; c never occurs in training.
TRAIN = [0, 1, 0, 1, 0, 1]
VAL = [1, 0, 1, 2]


def _real_text() -> str:
    path = os.environ.get("LM_LENS_TINY_SHAKESPEARE")
    if path and os.path.exists(path):
        return open(path, encoding="utf-8").read()[:300_000]
    return lm_core.load_corpus("builtin:python-docs")[:300_000]


def test_unigram_and_bigram_losses_match_a_hand_computation():
    m = fit_ngrams(TRAIN, vocab_size=3, max_n=2, discount=0.5)
    # unigram: c(a) = c(b) = 3, N = 6, 2 types; P(w) = (max(c - 1/2, 0) + 1/2 * 2 * 1/3) / 6
    p_a = p_b = (3 - 0.5 + 1 / 3) / 6            # 17/36
    p_c = (1 / 3) / 6                             # 1/18
    assert m.next_token_probs([], 1) == pytest.approx([p_a, p_b, p_c])
    expected = -(math.log(p_a) + math.log(p_b) + math.log(p_c)) / 3   # targets a, b, c of VAL
    assert m.loss(VAL, 1) == pytest.approx(expected, rel=1e-12)

    # bigram: the lower level uses continuation counts (a and b each follow one distinct token):
    # Pc(a) = Pc(b) = (1 - 1/2 + 1/2 * 2 * 1/3) / 2 = 5/12, Pc(c) = (1/3) / 2 = 1/6
    # after a: c(a,b) = 3 (1 type); after b: c(b,a) = 2 (1 type)
    p_b_after_a = (3 - 0.5 + 0.5 * 1 * 5 / 12) / 3       # 65/72
    p_a_after_b = (2 - 0.5 + 0.5 * 1 * 5 / 12) / 2       # 41/48
    p_c_after_b = (0.5 * 1 * 1 / 6) / 2                  # 1/24
    assert p_b_after_a == pytest.approx(65 / 72) and p_a_after_b == pytest.approx(41 / 48)
    losses = m.token_losses(VAL, 2)                       # targets: a|b, b|a, c|b
    np.testing.assert_allclose(losses, [-math.log(p_a_after_b), -math.log(p_b_after_a), -math.log(p_c_after_b)],
                               rtol=1e-12)
    assert m.loss(VAL, 2) == pytest.approx(losses.mean())
    assert m.next_token_probs([1, 0], 2) == pytest.approx([(0.5 * 5 / 12) / 3, 65 / 72, (0.5 / 6) / 3])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_matches_a_slow_reference_implementation(n):
    rng = np.random.default_rng(n)
    train = list(rng.integers(0, 4, size=200) * (rng.random(200) < 0.8))  # skewed, token 4 unseen
    m = fit_ngrams(train, vocab_size=5, max_n=4, discount=0.7)
    val = [int(x) for x in rng.integers(0, 5, size=30)]
    got = m.token_losses(val, n)
    for t in range(1, len(val)):
        ctx = tuple(val[max(0, t - n + 1):t])
        ref = _slow_kn(train, 5, n, 0.7, ctx, val[t])
        assert got[t - 1] == pytest.approx(-math.log(ref), rel=1e-10), (t, ctx)


def _slow_kn(train, V, n, D, ctx, w):
    """P_n(w | ctx) by the textbook recursion; a short ctx starts at its own length."""
    def grams(m):
        return Counter(tuple(train[i:i + m]) for i in range(len(train) - m + 1))

    def cont(m):
        c = defaultdict(set)
        for g in grams(m + 1):
            c[g[1:]].add(g[0])
        return {g: len(s) for g, s in c.items()}

    def p(h, top):
        k = len(h)
        lower = p(h[1:], False) if k > 0 else 1.0 / V
        counts = grams(k + 1) if top else cont(k + 1)
        row = {g[-1]: c for g, c in counts.items() if g[:-1] == h}
        total = sum(row.values())
        if total == 0:
            return lower
        return (max(row.get(w, 0) - D, 0) + D * len(row) * lower) / total

    h = tuple(ctx[-(n - 1):]) if n > 1 else ()
    # the top level (raw counts) is the order-n one; a shorter context never reaches it
    if len(h) == n - 1:
        return p(h, True)
    return p(h, False)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_every_context_sums_to_one_and_every_token_is_possible(n):
    text = _real_text()
    tok = lm_core.CharTokenizer.train(text[:200_000])
    m = fit_ngrams(tok.encode(text[:200_000]), tok.vocab_size)
    rng = np.random.default_rng(0)
    contexts = [[], [tok.unk_id], [int(x) for x in rng.integers(0, tok.vocab_size, size=3)],
                tok.encode("the"), tok.encode("zqx")]
    for ctx in contexts:
        p = m.next_token_probs(ctx, n)
        assert p.shape == (tok.vocab_size,)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        assert (p > 0).all()
    d = m.distributions(tok.encode("to be or not"), n)
    np.testing.assert_allclose(d.sum(axis=1), 1.0, atol=1e-9)


def test_unseen_context_backs_off_to_the_shorter_one():
    m = fit_ngrams(TRAIN, vocab_size=3, max_n=3, discount=0.5)
    # "c" never occurred: after c, the bigram model uses its lower level (continuation unigram
    # 5/12, 5/12, 1/6), not a uniform guess
    assert m.next_token_probs([2], 2) == pytest.approx([5 / 12, 5 / 12, 1 / 6])
    # trigram after the unseen (c, a): the middle level after a, from continuation counts of
    # bigrams starting with a: (a, b) has one distinct left neighbour (b) ->
    # P(b|a) = (1 - 1/2 + 1/2 * 5/12) / 1, P(a|a) = 1/2 * 5/12, P(c|a) = 1/2 * 1/6
    assert m.next_token_probs([2, 0], 3) == pytest.approx([5 / 24, 1 / 2 + 5 / 24, 1 / 12])
    # a short context at the start of a text uses the longest context available
    assert m.token_losses([0, 1], 3)[0] == pytest.approx(-math.log(m.next_token_probs([0], 3)[1]))


def test_token_losses_mean_is_the_loss_and_rows_match_distributions():
    text = _real_text()[:50_000]
    tok = lm_core.CharTokenizer.train(text)
    ids = tok.encode(text)
    m = fit_ngrams(ids[:40_000], tok.vocab_size)
    val = ids[40_000:41_000]
    for n in (1, 2, 3, 4):
        tl = m.token_losses(val, n)
        assert tl.shape == (len(val) - 1,)
        assert m.loss(val, n) == pytest.approx(tl.mean())
        d = m.distributions(val[:50], n)
        np.testing.assert_allclose(-np.log(d[np.arange(49), val[1:50]]), tl[:49], rtol=1e-12)
    every = m.token_losses_all(val)
    assert sorted(every) == [1, 2, 3, 4]
    np.testing.assert_array_equal(every[3], m.token_losses(val, 3))


def test_longer_contexts_do_better_on_real_text_and_units_match_the_trainer():
    text = _real_text()
    tok = lm_core.CharTokenizer.train(text)
    rows = baseline_losses(tok, text)
    assert [r["n"] for r in rows] == [1, 2, 3, 4]
    assert [r["name"] for r in rows] == ["unigram", "bigram Markov chain", "trigram", "4-gram"]
    val = [r["val_loss"] for r in rows]
    assert val[1] < val[0] - 0.3          # the Markov chain beats counting letters
    assert val[2] < val[1] and val[3] < val[2]
    for r in rows:
        assert r["train_loss"] <= r["val_loss"] + 0.05   # fitted on train
        # char tokenizer: one token per character, so bpc = nats / ln 2
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-3)
    # the same splits as the trainer
    train, valsplit = split_text(text, tok, 64)
    m = fit_ngrams(train.ids, tok.vocab_size)
    again = score_baselines(m, train, valsplit)
    assert again[1]["val_loss"] == pytest.approx(rows[1]["val_loss"])


def test_bpe_bits_per_character_use_the_splits_tokens_per_character():
    text = lm_core.load_corpus("builtin:python-docs")[:60_000]
    tok = lm_core.BPETokenizer.train(text, vocab_size=300)
    rows = baseline_losses(tok, text, max_n=2)
    _, val = split_text(text, tok, 1)
    assert val.tokens_per_char < 1
    for r in rows:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2) * val.tokens_per_char)


def test_passed_at_finds_the_first_evaluation_below_each_baseline():
    hist = pd.DataFrame({"step": [0, 10, 20, 30, 40, 50],
                         "val_loss": [4.0, np.nan, 3.0, 2.4, np.nan, 2.0]})
    base = [{"name": "unigram", "val_loss": 3.3}, {"name": "bigram Markov chain", "val_loss": 2.5},
            {"name": "trigram", "val_loss": 1.9}]
    assert passed_at(hist, base) == {"unigram": 20, "bigram Markov chain": 30, "trigram": None}
    assert passed_at(hist.iloc[:0], base) == {"unigram": None, "bigram Markov chain": None, "trigram": None}


def test_bad_inputs_are_refused_with_a_sentence():
    with pytest.raises(ValueError, match="max_n"):
        fit_ngrams([0, 1], 2, max_n=5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fit_ngrams([0, 3], 2)
    with pytest.raises(ValueError, match="at least 2"):
        fit_ngrams([0], 2)
    with pytest.raises(ValueError, match="too large"):
        fit_ngrams([0, 1], 60_000, max_n=4)
    m = fit_ngrams(TRAIN, 3, max_n=2)
    with pytest.raises(ValueError, match="orders 1..2"):
        m.loss(VAL, 3)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        m.token_losses([1], 2)
    assert ngram_name(2) == NGRAM_NAMES[2] == "bigram Markov chain"
