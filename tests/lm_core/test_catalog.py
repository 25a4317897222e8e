"""The curated model list and the cost estimate shown before a download (no network)."""

from __future__ import annotations

import pytest

from lm_core import catalog
from lm_core.config import ModelConfig

KNOWN_PARAMS = {  # published parameter counts (embeddings included, tied unembedding once), in millions
    "gpt2": 124.4, "HuggingFaceTB/SmolLM2-135M": 134.5, "EleutherAI/pythia-70m": 70.4,
    "EleutherAI/pythia-160m": 162.3, "Qwen/Qwen2.5-0.5B": 494.0, "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1100.0,
}


def test_every_catalog_entry_is_a_loadable_family_of_its_published_size():
    assert [e.name for e in catalog.CATALOG] == list(KNOWN_PARAMS)
    for e in catalog.CATALOG:
        f = catalog.facts(e.name, e.config, e.download_bytes)
        assert f.n_params / 1e6 == pytest.approx(KNOWN_PARAMS[e.name], rel=0.005), e.name
        assert f.download_known and f.download_bytes == e.download_bytes
        # stored in 16 bits (4 for GPT-2), plus a tokenizer of a few MB
        per = 4 if e.name == "gpt2" else 2
        assert f.download_bytes == pytest.approx(per * f.n_params, rel=0.25), e.name
    assert catalog.catalog_entry("gpt2").config["n_layer"] == 12 and catalog.catalog_entry("nope") is None
    assert [e.name for e in catalog.CATALOG if e.slow] == ["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    assert {e.name for e in catalog.CATALOG if e.step_revisions} == {"EleutherAI/pythia-70m", "EleutherAI/pythia-160m"}


def test_facts_name_the_layout_and_kv_heads():
    f = catalog.facts("q", catalog.catalog_entry("Qwen/Qwen2.5-0.5B").config)
    assert f.kv_heads == 2 and f.config.n_head == 14
    assert f.layout.startswith("RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query (7 query heads")
    p = catalog.facts("p", catalog.catalog_entry("EleutherAI/pythia-70m").config)
    assert "parallel attention + MLP" in p.layout and "on 16 of 64 dims" in p.layout
    g = catalog.facts("g", catalog.catalog_entry("gpt2").config)
    assert g.layout == "LayerNorm · learned position embedding · GELU MLP · multi-head"
    # no download size given: estimated from the parameter count and the stored dtype
    assert not f.download_known and f.download_bytes == 2 * f.n_params and f.dtype == "bfloat16"


def test_facts_refuse_an_unsupported_family_with_its_name():
    with pytest.raises(ValueError, match="bert"):
        catalog.facts("x", {"model_type": "bert", "hidden_size": 8})


def test_forward_flops_count_two_per_weight_per_token_plus_attention():
    cfg = ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=4, bias=False)
    # blocks: attention 4·4·4 = 64 weights, MLP 2·4·16 = 128, norms 3·4 (LayerNorm weights) = 12;
    # unembedding 10·4 = 40 (tied: the embedding itself is a lookup, not a matmul)
    weights = cfg.n_params - 10 * 4 - 8 * 4 + 10 * 4
    assert catalog.forward_flops(cfg, 8) == 2 * weights * 8 + 4 * 8 * 8 * 4 * 1 * 1
    assert catalog.forward_flops(cfg, 8) > 2 * catalog.forward_flops(cfg, 4)  # attention grows as T²


def test_estimate_scales_with_size_and_speed():
    small = catalog.facts("p", catalog.catalog_entry("EleutherAI/pythia-70m").config).config
    big = catalog.facts("t", catalog.catalog_entry("TinyLlama/TinyLlama-1.1B-Chat-v1.0").config).config
    a, b = catalog.estimate(small, 50e9), catalog.estimate(big, 50e9, dtype="bfloat16")
    assert a.tokens == b.tokens == catalog.INSPECT_TOKENS
    assert a.resident_bytes >= 4 * small.n_params and b.resident_bytes >= 4 * big.n_params
    assert b.load_peak_bytes >= b.resident_bytes + 2 * big.n_params
    assert b.seconds > 10 * a.seconds
    assert catalog.estimate(small, 100e9).seconds == pytest.approx(a.seconds / 2)
    assert catalog.estimate(small, 50e9, tokens=10_000).tokens == small.block_size  # at most the context
    with pytest.raises(ValueError, match="flops_per_s"):
        catalog.estimate(small, 0)


def test_the_machine_speed_is_measured():
    from lm_core.timing import measure_matmul_flops

    rate = measure_matmul_flops(tokens=16, width=64, repeats=2)
    assert 1e6 < rate < 1e15
