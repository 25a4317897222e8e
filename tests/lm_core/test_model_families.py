"""The model's contract for every layout switch: hook names and shapes, residual identities,
pattern = softmax(rot_q·rot_kᵀ/√Dh + mask) recomputed from the hooks, capture parity, the KV
cache against recomputation, edits through hooks, generation, weights and configs round-trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lm_core
from lm_core import GPT, ModelConfig

torch.set_num_threads(1)

BASE = dict(vocab_size=29, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
LAYOUTS = {
    "gpt2": {},
    "llama": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", d_mlp=48, n_kv_head=2, bias=False,
                  tie_embeddings=False, rope_base=500.0),
    "mqa-qk-norm-d_head": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", n_kv_head=1, qk_norm=True,
                               d_head=12, bias=False, qkv_bias=True),
    "neox": dict(pos="rotary", rotary_pct=0.25, parallel_residual=True, tie_embeddings=False),
    "nopos-window": dict(pos="none", sliding_window=5, n_kv_head=2, mlp="swiglu"),
    "rms-learned-parallel": dict(norm="rmsnorm", parallel_residual=True, mlp_bias=False, attn_bias=False),
}
B, T = 2, 11


def _cfg(name: str) -> ModelConfig:
    return ModelConfig(**BASE, **LAYOUTS[name])


@pytest.fixture(scope="module", params=list(LAYOUTS))
def setup(request):
    cfg = _cfg(request.param)
    torch.manual_seed(0)
    m = GPT(cfg).eval()
    with torch.no_grad():  # norms and biases away from their init so identities are not trivial
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    idx = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))
    logits, cache = m.run_with_cache(idx)
    return m, idx, logits, cache


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    D, H, Hkv, Dh, Fw = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim
    s = {"hook_embed": (B, T, D), "ln_final.hook_normalized": (B, T, D)}
    if cfg.pos == "learned":
        s["hook_pos_embed"] = (B, T, D)
    if cfg.norm == "rmsnorm":
        s["ln_final.hook_scale"] = (B, T, 1)
    for l in range(cfg.n_layer):
        p = f"blocks.{l}."
        for n in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            s[p + n] = (B, T, D)
        if cfg.norm == "rmsnorm":
            for ln in ("ln1", "ln2"):
                s[f"{p}{ln}.hook_scale"], s[f"{p}{ln}.hook_normalized"] = (B, T, 1), (B, T, D)
        s[p + "attn.hook_q"], s[p + "attn.hook_z"] = (B, T, H, Dh), (B, T, H, Dh)
        s[p + "attn.hook_k"], s[p + "attn.hook_v"] = (B, T, Hkv, Dh), (B, T, Hkv, Dh)
        if cfg.pos == "rotary":
            s[p + "attn.hook_rot_q"], s[p + "attn.hook_rot_k"] = (B, T, H, Dh), (B, T, Hkv, Dh)
        s[p + "attn.hook_attn_scores"] = s[p + "attn.hook_pattern"] = (B, H, T, T)
        s[p + "mlp.hook_pre"] = s[p + "mlp.hook_post"] = (B, T, Fw)
        if cfg.mlp == "swiglu":
            s[p + "mlp.hook_pre_linear"] = (B, T, Fw)
    return s


def test_hook_names_and_shapes(setup):
    m, _, _, cache = setup
    shapes = expected_shapes(m.config)
    assert sorted(m.hook_names) == sorted(shapes)
    assert {k: tuple(v.shape) for k, v in cache.items()} == shapes


def test_capture_parity_and_params(setup):
    m, idx, logits, _ = setup
    with torch.no_grad():
        torch.testing.assert_close(m(idx), logits, atol=1e-5, rtol=1e-5)
    assert m.config.n_params == m.num_params()
    assert (m.lm_head.weight is m.wte.weight) == m.config.tie_embeddings


def test_residual_identities_and_mlp(setup):
    m, _, _, c = setup
    cfg = m.config
    first = c["hook_embed"] + (c["hook_pos_embed"] if cfg.pos == "learned" else 0)
    torch.testing.assert_close(c["resid_pre", 0], first)
    for l in range(cfg.n_layer):
        torch.testing.assert_close(c["resid_mid", l], c["resid_pre", l] + c["attn_out", l])
        torch.testing.assert_close(c["resid_post", l], c["resid_mid", l] + c["mlp_out", l])
        if l + 1 < cfg.n_layer:
            torch.testing.assert_close(c["resid_pre", l + 1], c["resid_post", l])
        if cfg.mlp == "swiglu":
            expected = F.silu(c["mlp_pre", l]) * c[f"blocks.{l}.mlp.hook_pre_linear"]
        else:
            expected = F.gelu(c["mlp_pre", l])
        torch.testing.assert_close(c["mlp_post", l], expected, atol=1e-6, rtol=1e-5)
        if cfg.norm == "rmsnorm":  # scale = RMS of the block input; normalized = x / scale * weight
            x = c["resid_pre", l]
            scale = c[f"blocks.{l}.ln1.hook_scale"]
            torch.testing.assert_close(scale, (x.pow(2).mean(-1, keepdim=True) + cfg.layer_norm_eps).sqrt())
            torch.testing.assert_close(c[f"blocks.{l}.ln1.hook_normalized"],
                                       x / scale * m.blocks[l].ln_1.weight.detach())
    torch.testing.assert_close(setup[2], m.lm_head(c["normalized"]), atol=1e-5, rtol=1e-5)


def _rotate(x: torch.Tensor, pos: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """RoPE spelled out pair by pair (dims i and i + R/2), independent of the model's code."""
    R = cfg.rotary_dim
    inv = cfg.rope_base ** (-torch.arange(0, R, 2).float() / R)
    ang = pos.float()[:, None] * inv  # (T, R/2)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # (T, 1, R/2)
    a, b = x[..., : R // 2], x[..., R // 2 : R]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, x[..., R:]], dim=-1)


def test_pattern_is_softmax_of_rotated_q_k(setup):
    m, _, _, c = setup
    cfg = m.config
    G = cfg.n_head // cfg.kv_heads
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((i - j < cfg.sliding_window) if cfg.sliding_window else True)
    for l in range(cfg.n_layer):
        q, k, v = c["q", l], c["k", l], c["v", l]
        if cfg.pos == "rotary":
            torch.testing.assert_close(c[f"blocks.{l}.attn.hook_rot_q"], _rotate(q, torch.arange(T), cfg))
            torch.testing.assert_close(c[f"blocks.{l}.attn.hook_rot_k"], _rotate(k, torch.arange(T), cfg))
            q, k = c[f"blocks.{l}.attn.hook_rot_q"], c[f"blocks.{l}.attn.hook_rot_k"]
        k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)  # query head h reads kv head h // G
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.head_dim)
        scores = scores.masked_fill(~allowed, float("-inf"))
        torch.testing.assert_close(c["attn_scores", l], scores, atol=1e-5, rtol=1e-5)
        pattern = c["pattern", l]
        torch.testing.assert_close(pattern, torch.softmax(scores, -1), atol=1e-6, rtol=1e-5)
        assert (pattern[..., ~allowed] == 0).all()
        torch.testing.assert_close(c["z", l], torch.einsum("bhqk,bkhd->bqhd", pattern, v), atol=1e-6, rtol=1e-5)


def test_kv_cache_matches_recompute_on_both_paths(setup):
    m, idx, full, _ = setup
    cfg = m.config
    kv = lm_core.KVCache()
    with torch.no_grad():
        steps = [m(idx[:, :3], kv_cache=kv)] + [m(idx[:, t:t + 1], kv_cache=kv) for t in range(3, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert kv.layers[0][0].shape == (B, cfg.kv_heads, T, cfg.head_dim)
    kv = lm_core.KVCache()
    with torch.no_grad():
        m(idx[:, :7], kv_cache=kv)
        logits, c = m.run_with_cache(idx[:, 7:9], kv_cache=kv)  # explicit path, two new positions
    torch.testing.assert_close(logits, full[:, 7:9], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c["pattern", 1], setup[3]["pattern", 1][:, :, 7:9, :9], atol=1e-6, rtol=1e-5)
    if cfg.pos == "rotary":  # new keys rotated at their absolute positions 7, 8
        torch.testing.assert_close(c[f"blocks.0.attn.hook_rot_k"], setup[3]["blocks.0.attn.hook_rot_k"][:, 7:9])


def test_editing_a_hook_changes_the_output(setup):
    m, idx, full, _ = setup
    name = "blocks.0.attn.hook_rot_k" if m.config.pos == "rotary" else "blocks.0.attn.hook_k"
    if m.config.norm == "rmsnorm":  # freezing the scale of ln1 at 1 changes what attention reads
        with torch.no_grad():
            out = m.run_with_hooks(idx, fwd_hooks=[("blocks.0.ln1.hook_scale", lambda t, n: torch.ones_like(t))])
            def freeze_in_place(t, n):
                t.fill_(1.0)  # returns nothing: the edit is the tensor itself

            in_place = m.run_with_hooks(idx, fwd_hooks=[("blocks.0.ln1.hook_scale", freeze_in_place)])
            looked = m.run_with_hooks(idx, fwd_hooks=[("blocks.0.ln1.hook_scale", lambda t, n: None)])
        assert (out - full).abs().max() > 1e-3
        torch.testing.assert_close(in_place, out)  # an edit in place counts as an edit
        torch.testing.assert_close(looked, full, atol=1e-5, rtol=1e-5)  # looking changes nothing
    with torch.no_grad():
        out = m.run_with_hooks(idx, fwd_hooks=[(name, lambda t, n: 300 * t)])  # sharpen every pattern
        assert (out - full).abs().max() > 1e-3
        torch.testing.assert_close(m(idx), full, atol=1e-5, rtol=1e-5)  # removed afterwards


def test_generate_with_and_without_kv_cache_past_block_size(setup):
    m = setup[0]
    kw = dict(max_new_tokens=22, temperature=1.0, seed=3, capture=True)
    a = list(lm_core.generate(m, [1, 2, 3], use_kv_cache=True, **kw))
    b = list(lm_core.generate(m, [1, 2, 3], use_kv_cache=False, **kw))
    assert [s.token_id for s in a] == [s.token_id for s in b]
    for sa, sb in zip(a, b):
        torch.testing.assert_close(sa.probs, sb.probs, atol=1e-5, rtol=1e-4)
    assert a[-1].truncated and a[0].attention.shape == (m.config.n_layer, m.config.n_head, 3)


def test_weights_round_trip(setup):
    m, idx, full, _ = setup
    other = GPT(m.config)
    other.load_weights(m.state_dict_for_save())
    with torch.no_grad():
        torch.testing.assert_close(other(idx), full)
    assert ("lm_head.weight" in m.state_dict_for_save()) != m.config.tie_embeddings
    assert ModelConfig.from_dict(m.config.to_dict()) == m.config
    assert hash(ModelConfig.from_dict(m.config.to_dict())) == hash(m.config)


def test_old_config_without_new_keys_is_gpt2():
    old = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=True,
               gelu_approximate="none", layer_norm_eps=1e-5)
    cfg = ModelConfig.from_dict(old)
    assert (cfg.norm, cfg.pos, cfg.mlp, cfg.kv_heads, cfg.tie_embeddings, cfg.parallel_residual) == \
        ("layernorm", "learned", "gelu", 4, True, False)
    assert cfg == ModelConfig(**old)


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="batchnorm"), "norm must be one of 'layernorm', 'rmsnorm'"),
    (dict(pos="alibi"), "pos must be one of 'learned', 'rotary', 'none'"),
    (dict(mlp="geglu"), "mlp must be one of 'gelu', 'swiglu'"),
    (dict(n_kv_head=3), r"n_kv_head \(3\) must divide n_head \(4\)"),
    (dict(n_kv_head=0), "n_kv_head must be at least 1"),
    (dict(pos="rotary", rotary_pct=0.1), "even number"),
    (dict(pos="rotary", rotary_pct=0.0), "rotary_pct"),
    (dict(norm="rmsnorm", norm_bias=True), "RMSNorm has no bias"),
    (dict(d_mlp=2.5), "d_mlp must be a whole number"),
    (dict(qkv_bias="yes"), "qkv_bias must be true or false"),
    (dict(parallel_residual=1), "parallel_residual must be true or false"),
    (dict(sliding_window=0), "sliding_window must be at least 1"),
    (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling must be null or Llama 3.1's"),
    (dict(pos="rotary", rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs exactly the keys"),
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
])
def test_invalid_layout_is_a_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**BASE, **kwargs})


def test_d_head_lifts_the_divisibility_rule():
    cfg = ModelConfig(**{**BASE, "n_embd": 30, "d_head": 8, "pos": "rotary"})
    m = GPT(cfg)
    assert m(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, BASE["vocab_size"])
    assert cfg.n_params == m.num_params()


def test_a_llama_style_run_trains_and_its_folder_reloads(tmp_path):
    """Run folders carry the layout in config.json: train a few steps, reload, same logits."""
    text = "the cat sat on the mat. " * 40
    tok = lm_core.CharTokenizer.train(text)
    cfg = ModelConfig(**{**BASE, **LAYOUTS["llama"], "vocab_size": tok.vocab_size})
    torch.manual_seed(0)
    model = GPT(cfg)
    tc = lm_core.TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, eval_interval=3, eval_iters=1,
                             log_interval=1, checkpoint_interval=3, sample_tokens=0, snapshots=0, device="cpu")
    trainer = lm_core.Trainer(model, tok, text, tc, run_dir=tmp_path / "run")
    for _ in range(3):
        trainer.step()
    trainer.save_checkpoint()
    run = lm_core.load_run(tmp_path / "run")
    assert run.model.config == cfg
    idx = torch.tensor([tok.encode("the cat")])
    with torch.no_grad():
        torch.testing.assert_close(run.model(idx), model.eval()(idx))
