"""Generation: sampling controls, KV-cache parity (also past block_size), capture, errors."""

from __future__ import annotations

import pytest
import torch

import lm_core
from lm_core import GPT, ModelConfig, generate, sampling_distribution

torch.set_num_threads(1)

CFG = ModelConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(3)
    m = GPT(CFG)
    with torch.no_grad():  # sharpen the distribution a little so greedy/top-k are meaningful
        m.wte.weight.mul_(20)
    return m.eval()


def run(model, **kw):
    return list(generate(model, [1, 2, 3], **kw))


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=0),
])
def test_kv_cache_equals_recompute_at_every_step_including_overflow(model, settings):
    n = 15  # prompt 3 + 15 new > block_size 8: the window slides
    a = run(model, max_new_tokens=n, seed=11, use_kv_cache=True, **settings)
    b = run(model, max_new_tokens=n, seed=11, use_kv_cache=False, **settings)
    assert [s.token_id for s in a] == [s.token_id for s in b]
    for sa, sb in zip(a, b):
        torch.testing.assert_close(sa.probs, sb.probs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sa.sample_probs, sb.sample_probs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sa.attention, sb.attention, atol=1e-5, rtol=1e-4)
        assert sa.context == sb.context and sa.truncated == sb.truncated
    assert [s.truncated for s in a] == [len(s.context) == 8 and s.position > 8 for s in a]
    assert a[-1].truncated and not a[0].truncated
    assert all(len(s.context) <= CFG.block_size for s in a)


def test_same_seed_same_tokens_other_seed_differs(model):
    a = [s.token_id for s in run(model, max_new_tokens=20, seed=5)]
    b = [s.token_id for s in run(model, max_new_tokens=20, seed=5)]
    c = [s.token_id for s in run(model, max_new_tokens=20, seed=6)]
    assert a == b and a != c


def test_greedy_takes_the_argmax(model):
    for s in run(model, max_new_tokens=6, temperature=0):
        assert s.token_id == int(torch.argmax(s.probs))
        assert s.sample_probs[s.token_id] == 1.0


def test_probs_are_temperature_one_and_sample_probs_follow_settings(model):
    for s in run(model, max_new_tokens=4, temperature=0.5, top_k=3):
        torch.testing.assert_close(s.probs, torch.softmax(s.logits, -1))
        assert (s.sample_probs > 0).sum() <= 3
        assert s.sample_probs[s.token_id] > 0
        torch.testing.assert_close(s.sample_probs.sum(), torch.tensor(1.0))


def test_sampling_distribution_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = sampling_distribution(logits, top_p=0.75)
    torch.testing.assert_close(p, torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8)
    p = sampling_distribution(logits, top_p=0.1)  # always at least the top token
    torch.testing.assert_close(p, torch.tensor([1.0, 0, 0, 0]))
    p = sampling_distribution(logits, top_k=2, temperature=1.0)
    assert (p > 0).tolist() == [True, True, False, False]
    hot = sampling_distribution(logits, temperature=10.0)
    assert hot.max() < 0.3  # flatter


def test_attention_row_and_step_cache(model):
    steps = run(model, max_new_tokens=3, seed=0)
    first, second = steps[0], steps[1]
    assert first.attention.shape == (CFG.n_layer, CFG.n_head, 3)
    torch.testing.assert_close(first.attention.sum(-1), torch.ones(CFG.n_layer, CFG.n_head))
    assert second.attention.shape == (CFG.n_layer, CFG.n_head, 4)
    # with the KV cache the first step computes the prompt, later steps only the new position
    assert first.cache["blocks.0.hook_resid_pre"].shape[1] == 3
    assert second.cache["blocks.0.hook_resid_pre"].shape[1] == 1
    no_kv = run(model, max_new_tokens=2, seed=0, use_kv_cache=False)
    assert no_kv[1].cache["blocks.0.hook_resid_pre"].shape[1] == 4


def test_capture_false_and_name_filter(model):
    steps = run(model, max_new_tokens=2, capture=False)
    assert steps[0].attention is None and steps[0].cache is None
    steps = run(model, max_new_tokens=2, capture=["hook_embed"])
    assert set(steps[0].cache) == {"hook_embed"} | {f"blocks.{l}.attn.hook_pattern" for l in range(2)}
    assert steps[0].attention is not None


def test_model_mode_is_restored_and_dropout_not_used():
    m = GPT(CFG.replace(dropout=0.5)).train()
    a = [s.token_id for s in generate(m, [1], max_new_tokens=5, seed=1)]
    b = [s.token_id for s in generate(m, [1], max_new_tokens=5, seed=1)]
    assert a == b and m.training


def test_tensor_prompt_and_entropy(model):
    steps = list(generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=2, seed=11))
    ref = run(model, max_new_tokens=2, seed=11)
    assert [s.token_id for s in steps] == [s.token_id for s in ref]
    assert 0 <= steps[0].entropy <= float(torch.log(torch.tensor(17.0))) + 1e-6
    assert 0 < steps[0].prob <= 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(ids=[]), "prompt is empty"),
    (dict(ids=[99]), "outside the vocabulary"),
    (dict(ids=torch.zeros(2, 3, dtype=torch.long)), "one sequence"),
    (dict(temperature=-1), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_arguments(model, kwargs, message):
    kwargs = {"ids": [1, 2], **kwargs}
    with pytest.raises(ValueError, match=message):
        list(generate(model, **kwargs))


def test_long_prompt_is_cut_to_the_window(model):
    steps = list(generate(model, list(range(12)), max_new_tokens=2, seed=0))
    assert steps[0].truncated and steps[0].context == list(range(4, 12))
    assert steps[0].position == 12
    assert lm_core.generate is generate
