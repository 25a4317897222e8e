"""lm_core.mechanics: the walkthrough redoes every layout's arithmetic and each step equals the
model's own hooks (RMSNorm scale, q/k norm, rotary q/k, grouped-query sharing, SwiGLU, parallel
residual, sliding window); rotary profile; key/value groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lm_core
from lm_core import analysis
from lm_core.mechanics import attention_walkthrough, kv_groups, kv_head_of, layout, rotary_profile

torch.set_num_threads(1)

BASE = dict(vocab_size=29, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
FAMILIES = {
    "gpt2": {},
    "llama": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", d_mlp=48, n_kv_head=2, bias=False,
                  tie_embeddings=False, rope_base=500.0),
    "qwen2": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", n_kv_head=2, bias=False, qkv_bias=True),
    "qwen3-mqa": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", n_kv_head=1, qk_norm=True, d_head=12,
                      bias=False),
    "neox": dict(pos="rotary", rotary_pct=0.25, parallel_residual=True, tie_embeddings=False),
    "nopos-window": dict(pos="none", sliding_window=5, n_kv_head=2, mlp="swiglu"),
    "llama3-scaling": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", bias=False,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
}
IDS = torch.tensor([[3, 7, 1, 3, 7, 5, 9, 3, 7, 1, 2, 11, 0]])


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    torch.manual_seed(0)
    m = lm_core.GPT(lm_core.ModelConfig(**BASE, **FAMILIES[request.param])).eval()
    with torch.no_grad():  # norms and biases away from their init, larger weights: nothing trivial
        for name, p in m.named_parameters():
            p.add_(0.2 * torch.randn_like(p)) if p.dim() == 1 else p.mul_(4.0)
    _, cache = m.run_with_cache(IDS)
    return request.param, m, cache


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3)])
def test_every_step_equals_the_model_hooks(family, layer, head):
    name, m, cache = family
    cfg = m.config
    w = attention_walkthrough(m, IDS, layer, head)
    tol = dict(atol=2e-5, rtol=2e-5)
    p = f"blocks.{layer}."
    g = head // (cfg.n_head // cfg.kv_heads)
    assert w["kv_head"] == g and head in w["group"] and len(w["group"]) == cfg.n_head // cfg.kv_heads
    # embeddings: a position table only with learned positions
    assert ("pos_embed" in w) == (cfg.pos == "learned")
    if layer == 0:
        want = w["tok_embed"] + w["pos_embed"] if cfg.pos == "learned" else w["tok_embed"]
        torch.testing.assert_close(w["resid_pre"], want, **tol)
    torch.testing.assert_close(w["resid_pre"], cache[p + "hook_resid_pre"][0], **tol)
    # the first norm, spelled out
    torch.testing.assert_close(w["ln_1"], w["ln1_centred"] / w["ln1_scale"][:, None] * w["ln1_weight"] + w["ln1_bias"], **tol)
    if cfg.norm == "rmsnorm":
        torch.testing.assert_close(w["ln1_centred"], w["resid_pre"])
        torch.testing.assert_close(w["ln1_scale"], cache[p + "ln1.hook_scale"][0, :, 0], **tol)
        torch.testing.assert_close(w["ln_1"], cache[p + "ln1.hook_normalized"][0], **tol)
        torch.testing.assert_close(w["ln2_scale"], cache[p + "ln2.hook_scale"][0, :, 0], **tol)
        torch.testing.assert_close(w["ln_2"], cache[p + "ln2.hook_normalized"][0], **tol)
        torch.testing.assert_close(w["final_scale"], cache["ln_final.hook_scale"][0, :, 0], **tol)
    else:
        torch.testing.assert_close(w["ln_1"], F.layer_norm(w["resid_pre"], (cfg.n_embd,), w["ln1_weight"],
                                                           w["ln1_bias"], cfg.layer_norm_eps), **tol)
    # q, k, v: k and v of the key/value head this query head reads
    torch.testing.assert_close(w["q_proj"], w["ln_1"] @ w["W_Q"] + w["b_Q"], **tol)
    torch.testing.assert_close(w["k_proj"], w["ln_1"] @ w["W_K"] + w["b_K"], **tol)
    torch.testing.assert_close(w["v"], w["ln_1"] @ w["W_V"] + w["b_V"], **tol)
    torch.testing.assert_close(w["q"], cache[p + "attn.hook_q"][0, :, head], **tol)
    torch.testing.assert_close(w["k"], cache[p + "attn.hook_k"][0, :, g], **tol)
    torch.testing.assert_close(w["v"], cache[p + "attn.hook_v"][0, :, g], **tol)
    if not cfg.qk_norm:
        torch.testing.assert_close(w["q"], w["q_proj"])
    else:  # RMSNorm over the head's dims
        rms = (w["q_proj"].pow(2).mean(-1, keepdim=True) + cfg.layer_norm_eps).sqrt()
        torch.testing.assert_close(w["q"], w["q_proj"] / rms * w["q_norm_weight"], **tol)
    if cfg.pos == "rotary":
        R = cfg.rotary_dim
        torch.testing.assert_close(w["q_rot"], cache[p + "attn.hook_rot_q"][0, :, head], **tol)
        torch.testing.assert_close(w["k_rot"], cache[p + "attn.hook_rot_k"][0, :, g], **tol)
        assert w["angles"].shape == (IDS.shape[1], R // 2)
        torch.testing.assert_close(w["angles"][3], 3 * w["inv_freq"])
        # each pair (i, i + R/2) turns by its angle; dims from R on pass through unchanged
        i, t = 0, 5
        a = w["angles"][t, i]
        x1, x2 = w["q"][t, i], w["q"][t, i + R // 2]
        torch.testing.assert_close(w["q_rot"][t, i], x1 * torch.cos(a) - x2 * torch.sin(a), **tol)
        torch.testing.assert_close(w["q_rot"][t, R:], w["q"][t, R:])
        torch.testing.assert_close(w["scores_raw"], w["q_rot"] @ w["k_rot"].T, **tol)
    else:
        assert "q_rot" not in w and "angles" not in w
        torch.testing.assert_close(w["scores_raw"], w["q"] @ w["k"].T, **tol)
    torch.testing.assert_close(w["scaled"], w["scores_raw"] / math.sqrt(cfg.head_dim))
    torch.testing.assert_close(w["masked"], cache[p + "attn.hook_attn_scores"][0, head], **tol)
    torch.testing.assert_close(w["pattern"], cache[p + "attn.hook_pattern"][0, head], **tol)
    torch.testing.assert_close(w["z"], cache[p + "attn.hook_z"][0, :, head], **tol)
    torch.testing.assert_close(w["z"], w["pattern"] @ w["v"], **tol)
    torch.testing.assert_close(w["head_out"], w["z"] @ w["W_O"], **tol)
    torch.testing.assert_close(w["attn_out"], cache[p + "hook_attn_out"][0], **tol)
    torch.testing.assert_close(w["head_outputs"].sum(0) + w["c_proj_bias"], w["attn_out"], **tol)
    torch.testing.assert_close(w["resid_mid"], cache[p + "hook_resid_mid"][0], **tol)
    # parallel residual: the MLP reads the block input, not resid_mid
    torch.testing.assert_close(w["mlp_in"], w["resid_pre"] if cfg.parallel_residual else w["resid_mid"])
    torch.testing.assert_close(w["mlp_pre"], cache[p + "mlp.hook_pre"][0], **tol)
    torch.testing.assert_close(w["mlp_post"], cache[p + "mlp.hook_post"][0], **tol)
    if cfg.mlp == "swiglu":
        torch.testing.assert_close(w["mlp_pre_linear"], cache[p + "mlp.hook_pre_linear"][0], **tol)
        torch.testing.assert_close(w["mlp_post"], F.silu(w["mlp_pre"]) * w["mlp_pre_linear"], **tol)
    else:
        assert "mlp_pre_linear" not in w
    torch.testing.assert_close(w["mlp_out"], cache[p + "hook_mlp_out"][0], **tol)
    torch.testing.assert_close(w["resid_post"], cache[p + "hook_resid_post"][0], **tol)
    torch.testing.assert_close(w["probs"].sum(-1), torch.ones(IDS.shape[1]))
    # the mask: nothing after the query; with a sliding window nothing older than the window
    assert float(w["pattern"].triu(1).abs().sum()) == 0.0
    if cfg.sliding_window is not None:
        W = cfg.sliding_window
        assert float(w["pattern"][-1, : IDS.shape[1] - W].sum()) == 0.0


def test_walkthrough_is_reachable_from_analysis_and_restores_mode():
    m = lm_core.GPT(lm_core.ModelConfig(**BASE, **FAMILIES["llama"])).train()
    w = analysis.attention_walkthrough(m, IDS, 0, 1)
    assert m.training and w["layout"].norm_name == "RMSNorm"
    with pytest.raises(ValueError, match="head 4 does not exist"):
        analysis.attention_walkthrough(m, IDS, 0, 4)


def test_layout_words_and_kv_groups():
    llama = lm_core.ModelConfig(**BASE, **FAMILIES["llama"])
    lay = layout(llama)
    assert (lay.norm_name, lay.pos_name, lay.mlp_name) == ("RMSNorm", "rotary (RoPE)", "SwiGLU MLP")
    assert "grouped-query (2 query heads per key/value head)" in lay.summary()
    gpt2 = layout(lm_core.ModelConfig(**BASE))
    assert gpt2.summary() == "LayerNorm · learned position embedding · GELU MLP · multi-head"
    neox = layout(lm_core.ModelConfig(**BASE, **FAMILIES["neox"]))
    assert "rotary (RoPE) on 2 of 8 dims" in neox.summary() and "parallel" in neox.summary()
    assert kv_groups(llama) == [[0, 1], [2, 3]] and [kv_head_of(llama, h) for h in range(4)] == [0, 0, 1, 1]
    assert kv_groups(lm_core.ModelConfig(**BASE)) == [[0], [1], [2], [3]]
    assert analysis.kv_groups(lm_core.ModelConfig(**BASE, **FAMILIES["qwen3-mqa"])) == [[0, 1, 2, 3]]


def test_rotary_profile_is_the_scores_of_a_rotated_q_and_k(family):
    name, m, _ = family
    prof = rotary_profile(m)
    if m.config.pos != "rotary":
        assert prof is None
        return
    R = m.config.rotary_dim
    np.testing.assert_allclose(prof["inv_freq"], m.rope_inv_freq.numpy(), rtol=1e-6)
    np.testing.assert_allclose(prof["wavelength"], 2 * np.pi / prof["inv_freq"], rtol=1e-5)
    assert prof["distance"].tolist() == list(range(m.config.block_size))
    assert prof["score"][0] == pytest.approx(1.0)
    # the same number from the model's own rotation of an all-ones q and k at positions m + d and m
    from lm_core.model import apply_rotary

    T = m.config.block_size
    ang = torch.arange(T).float()[:, None] * m.rope_inv_freq[None, :]
    emb = torch.cat((ang, ang), -1)[:, None, :]
    ones = torch.ones(T, 1, R)
    rot = apply_rotary(ones, emb.cos(), emb.sin())[:, 0]  # (T, R)
    for d in (1, 5, T - 1):
        want = float(rot[d] @ rot[0]) / R
        assert prof["score"][d] == pytest.approx(want, abs=1e-5)
        assert float(rot[d + 0] @ rot[0]) == pytest.approx(float(rot[T - 1] @ rot[T - 1 - d]), abs=1e-4)
    assert rotary_profile(m, max_distance=3)["score"].shape == (4,)
