"""Model families from Hugging Face: parity with transformers' own implementation, per family.

Random-weight models built from each family's config, every parameter (norm gains, biases)
moved far from its init, several shapes (GQA ratios, rotary shares, head sizes that are not
powers of two, a sliding window shorter than the input). Logits and every attention pattern
(``output_attentions=True`` with the eager implementation) agree within 1e-4; so does our
fused path, and the KV cache agrees with recomputation.
"""

from __future__ import annotations

import json

import pytest
import torch

import lm_core
from lm_core.convert import config_from_hf, gpt_from_hf
from support import scramble

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)

torch.set_num_threads(1)

V = 97
BASE = dict(vocab_size=V, bos_token_id=0, eos_token_id=0, pad_token_id=None, attn_implementation="eager")

# (id, config class, kwargs, input length)
CASES = [
    ("llama-gqa2-tied", "LlamaConfig", dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2,
     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
     tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 100000.0}), 24),
    ("llama-mqa-biases", "LlamaConfig", dict(hidden_size=72, intermediate_size=64, num_hidden_layers=2,
     num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32, attention_bias=True,
     mlp_bias=True, tie_word_embeddings=False), 20),
    ("llama3-rope-scaling", "LlamaConfig", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
     rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), 48),
    ("mistral-window", "MistralConfig", dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
     num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64, sliding_window=7,
     tie_word_embeddings=False), 20),
    ("qwen2-qkv-bias", "Qwen2Config", dict(hidden_size=64, intermediate_size=80, num_hidden_layers=2,
     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False), 24),
    ("qwen3-qk-norm-head24", "Qwen3Config", dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
     num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64,
     tie_word_embeddings=True), 24),
    ("neox-pythia", "GPTNeoXConfig", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
     num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.25, tie_word_embeddings=False), 24),
    ("neox-serial-half-rotary", "GPTNeoXConfig", dict(hidden_size=80, intermediate_size=100, num_hidden_layers=3,
     num_attention_heads=4, max_position_embeddings=32, rotary_pct=0.5, use_parallel_residual=False,
     hidden_act="gelu_new", layer_norm_eps=1e-3, tie_word_embeddings=False), 20),
]


def hf_model(cls_name: str, kw: dict, seed: int = 0):
    """A random transformers model whose every parameter (norm gains, biases) is far from its init."""
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls_name)(**{**BASE, **kw})
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    scramble(hf)
    return hf


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    _, cls_name, kw, T = request.param
    hf = hf_model(cls_name, kw)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    return hf, gpt_from_hf(hf), idx


def test_logits_and_every_pattern_match_transformers(case):
    hf, ours, idx = case
    with torch.no_grad():
        out = hf(idx, output_attentions=True)
        logits, cache = ours.run_with_cache(idx)
        fused = ours(idx)
    assert out.logits.abs().max() > 1.0  # a real signal, not near-zero noise
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused, out.logits, atol=1e-4, rtol=1e-4)
    assert len(out.attentions) == ours.config.n_layer
    for l, att in enumerate(out.attentions):
        assert cache["pattern", l].shape == att.shape  # one row per query head
        torch.testing.assert_close(cache["pattern", l], att, atol=1e-4, rtol=1e-4)


def test_kv_cache_equals_recompute(case):
    _, ours, idx = case
    T = idx.shape[1]
    kv = lm_core.KVCache()
    with torch.no_grad():
        full = ours(idx)
        steps = [ours(idx[:, :5], kv_cache=kv)] + [ours(idx[:, t:t + 1], kv_cache=kv) for t in range(5, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    cfg = ours.config
    assert kv.layers[0][0].shape == (2, cfg.kv_heads, T, cfg.head_dim)  # only the key/value heads


def test_config_json_without_defaults_gives_the_same_config(case, tmp_path):
    """save_pretrained writes only what differs from the class defaults: the folder path fills them in."""
    hf, ours, _ = case
    hf.config.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert config_from_hf(d) == ours.config


def test_folder_round_trip(tmp_path):
    hf = hf_model("Qwen2Config", dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model, tok = lm_core.load_pretrained(str(tmp_path))
    assert tok is None and model.config.qkv_bias and not model.config.use_attn_out_bias
    idx = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)


def test_mapping_of_family_features():
    cfgs = {cid: config_from_hf(getattr(transformers, cls)(**BASE, **kw)) for cid, cls, kw, _ in CASES}
    c = cfgs["neox-pythia"]
    assert (c.norm, c.pos, c.rotary_pct, c.rotary_dim, c.parallel_residual, c.tie_embeddings) == \
        ("layernorm", "rotary", 0.25, 4, True, False)
    c = cfgs["qwen2-qkv-bias"]
    assert (c.use_qkv_bias, c.use_attn_out_bias, c.use_mlp_bias, c.kv_heads) == (True, False, False, 2)
    c = cfgs["qwen3-qk-norm-head24"]
    assert (c.qk_norm, c.head_dim, c.n_embd) == (True, 24, 48)
    assert cfgs["neox-serial-half-rotary"].rotary_dim == 10 and cfgs["neox-serial-half-rotary"].head_dim == 20
    assert cfgs["mistral-window"].sliding_window == 7
    assert cfgs["llama3-rope-scaling"].rope_scaling["factor"] == 8.0
    assert cfgs["llama-gqa2-tied"].rope_base == 100000.0 and cfgs["llama-gqa2-tied"].mlp == "swiglu"


@pytest.mark.parametrize("cls_name, kw, message", [
    ("GPTJConfig", dict(n_embd=32, n_layer=1, n_head=4, rotary_dim=4), "model_type 'gptj' is not supported"),
    ("LlamaConfig", dict(hidden_size=32, num_attention_heads=4, hidden_act="gelu"), "activation 'gelu'"),
    ("LlamaConfig", dict(hidden_size=32, num_attention_heads=4,
                         rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "RoPE scaling 'yarn'"),
    ("Qwen2Config", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=4, use_sliding_window=True,
                         sliding_window=8, max_window_layers=2, max_position_embeddings=64), "some layers only"),
    ("LlamaConfig", dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                         intermediate_size=28672), "Llama .* cannot be loaded: this model would have"),
    ("GPTNeoXConfig", dict(hidden_size=48, num_attention_heads=4, rotary_pct=0.25), "odd number of dimensions"),
])
def test_unsupported_variants_get_one_sentence(cls_name, kw, message):
    cfg = getattr(transformers, cls_name)(**{k: v for k, v in BASE.items() if k != "attn_implementation"}, **kw)
    with pytest.raises(ValueError, match=message):
        config_from_hf(cfg)


def test_gpt_from_hf_refuses_an_unsupported_model_by_name():
    cfg = transformers.GPTJConfig(vocab_size=V, n_embd=32, n_layer=1, n_head=4, rotary_dim=4, n_positions=16)
    hf = transformers.GPTJForCausalLM(cfg)
    with pytest.raises(ValueError, match="'gptj' is not supported"):
        lm_core.GPT.from_hf(hf)
