"""The model's contract: hook names and shapes, residual invariants, capture parity, hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lm_core
from lm_core import GPT, ModelConfig
from support import make_tiny_model

torch.set_num_threads(1)

CFG = ModelConfig(vocab_size=23, block_size=12, n_layer=3, n_head=4, n_embd=32, dropout=0.0)
B, T = 2, 10


@pytest.fixture(scope="module")
def model() -> GPT:
    # non-trivial LayerNorm and bias values so invariants are not satisfied by accident
    m = make_tiny_model()
    assert m.config == CFG
    return m


@pytest.fixture(scope="module")
def idx() -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def run(model, idx):
    return model.run_with_cache(idx)


def expected_shapes(cfg: ModelConfig, b: int, t: int) -> dict[str, tuple[int, ...]]:
    D, H, Dh = cfg.n_embd, cfg.n_head, cfg.head_dim
    shapes = {"hook_embed": (b, t, D), "hook_pos_embed": (b, t, D), "ln_final.hook_normalized": (b, t, D)}
    for l in range(cfg.n_layer):
        p = f"blocks.{l}."
        for n in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            shapes[p + n] = (b, t, D)
        for n in ("hook_q", "hook_k", "hook_v", "hook_z"):
            shapes[p + "attn." + n] = (b, t, H, Dh)
        for n in ("hook_attn_scores", "hook_pattern"):
            shapes[p + "attn." + n] = (b, H, t, t)
        shapes[p + "mlp.hook_pre"] = (b, t, 4 * D)
        shapes[p + "mlp.hook_post"] = (b, t, 4 * D)
    return shapes


def test_every_hook_name_with_its_shape(model, run):
    shapes = expected_shapes(CFG, B, T)
    assert sorted(model.hook_names) == sorted(shapes)
    _, cache = run
    assert sorted(cache) == sorted(shapes)
    for name, shape in shapes.items():
        t = cache[name]
        assert tuple(t.shape) == shape, name
        assert t.device.type == "cpu" and not t.requires_grad


def test_logits_shape_and_capture_parity(model, idx, run):
    logits, _ = run
    assert logits.shape == (B, T, CFG.vocab_size)
    with torch.no_grad():
        plain = model(idx)
    torch.testing.assert_close(plain, logits, atol=1e-5, rtol=0)


def test_residual_stream_invariants(run):
    _, c = run
    torch.testing.assert_close(c["blocks.0.hook_resid_pre"], c["hook_embed"] + c["hook_pos_embed"])
    for l in range(CFG.n_layer):
        torch.testing.assert_close(c["resid_mid", l], c["resid_pre", l] + c["attn_out", l])
        torch.testing.assert_close(c["resid_post", l], c["resid_mid", l] + c["mlp_out", l])
        if l + 1 < CFG.n_layer:
            torch.testing.assert_close(c["resid_pre", l + 1], c["resid_post", l])
        torch.testing.assert_close(c["mlp_post", l], F.gelu(c["mlp_pre", l]))


def test_pattern_is_causal_softmax_of_q_k(run):
    _, c = run
    Dh = CFG.head_dim
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for l in range(CFG.n_layer):
        pattern = c["pattern", l]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(B, CFG.n_head, T))
        assert (pattern[..., upper] == 0).all()
        q, k, v = c["q", l], c["k", l], c["v", l]  # [B, T, H, Dh]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(Dh)
        scores = scores.masked_fill(upper, float("-inf"))
        torch.testing.assert_close(c["attn_scores", l], scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pattern, torch.softmax(scores, -1), atol=1e-6, rtol=1e-5)
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        torch.testing.assert_close(c["z", l], z, atol=1e-6, rtol=1e-5)


def test_names_filter_keeps_only_what_was_asked(model, idx):
    names = ["blocks.1.attn.hook_pattern", "hook_embed"]
    _, cache = model.run_with_cache(idx, names=names)
    assert sorted(cache) == sorted(names)
    _, cache = model.run_with_cache(idx, names=lambda n: n.endswith("hook_z"))
    assert sorted(cache) == [f"blocks.{l}.attn.hook_z" for l in range(CFG.n_layer)]
    with pytest.raises(ValueError, match="unknown hook name"):
        model.run_with_cache(idx, names=["blocks.9.attn.hook_pattern"])


def test_cache_shorthand(run):
    _, c = run
    assert c["pattern", 1] is c["blocks.1.attn.hook_pattern"]
    assert c["normalized"] is c["ln_final.hook_normalized"]
    with pytest.raises(KeyError, match="layer index"):
        c["pattern"]


def test_final_norm_feeds_the_unembedding(model, run):
    logits, c = run
    torch.testing.assert_close(logits, c["normalized"] @ model.wte.weight.T, atol=1e-5, rtol=1e-5)


def test_head_ablation_equals_hand_computation(model, idx):
    layer, head = 1, 2
    Dh = CFG.head_dim

    def zero_head(z, name):
        z = z.clone()
        z[:, :, head, :] = 0.0
        return z

    with torch.no_grad():
        ablated = model.run_with_hooks(idx, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])
        # by hand: rerun the blocks, replacing attn_out of `layer` with c_proj of the edited z
        _, c = model.run_with_cache(idx)
        blk = model.blocks[layer]
        z = c["z", layer].clone()
        z[:, :, head, :] = 0
        attn_out = blk.attn.c_proj(z.reshape(B, T, CFG.n_embd))
        x = c["resid_pre", layer] + attn_out
        x = x + blk.mlp(blk.ln_2(x))
        for l in range(layer + 1, CFG.n_layer):
            x = model.blocks[l](x)
        by_hand = model.lm_head(model.ln_final(x))
    torch.testing.assert_close(ablated, by_hand, atol=1e-5, rtol=1e-5)
    assert (ablated - model(idx)).abs().max() > 1e-4  # the head mattered
    assert Dh == CFG.n_embd // CFG.n_head


def test_hooks_removed_after_exception(model, idx):
    def boom(t, name):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        model.run_with_hooks(idx, fwd_hooks=[("blocks.0.hook_resid_pre", boom)])
    assert not any(hp.active for hp in model.hook_dict.values())
    with pytest.raises(RuntimeError):
        model.run_with_cache(idx, fwd_hooks=[("blocks.2.mlp.hook_post", boom)])
    assert not any(hp.active for hp in model.hook_dict.values())
    model(idx)  # still works


def test_hook_returning_wrong_shape_is_a_clear_error(model, idx):
    with pytest.raises(ValueError, match="must return None or a tensor of shape"):
        model.run_with_hooks(idx, fwd_hooks=[("hook_embed", lambda t, n: t[:, :1])])
    assert not any(hp.active for hp in model.hook_dict.values())


def test_nested_hook_contexts_remove_only_their_own(model, idx):
    seen = []
    with model.hooks([("hook_embed", lambda t, n: seen.append("outer"))]):
        with model.hooks([("hook_embed", lambda t, n: seen.append("inner"))]):
            model(idx)
        model(idx)
    model(idx)
    assert seen == ["outer", "inner", "outer"]


def test_attention_scores_hook_can_edit_the_pattern(model, idx):
    def only_self(scores, name):
        eye = torch.eye(T, dtype=torch.bool)
        return scores.masked_fill(~eye, float("-inf"))

    _, c = model.run_with_cache(
        idx, names=["blocks.0.attn.hook_pattern"], fwd_hooks=[("blocks.0.attn.hook_attn_scores", only_self)]
    )
    torch.testing.assert_close(c["pattern", 0][0, 0], torch.eye(T))


def test_too_long_input_is_a_value_error(model):
    with pytest.raises(ValueError, match="block_size=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(5, dtype=torch.long))


def test_kv_cache_forward_matches_full_forward(model, idx):
    kv = lm_core.KVCache()
    with torch.no_grad():
        full = model(idx)
        first = model(idx[:, :4], kv_cache=kv)
        steps = [first] + [model(idx[:, t : t + 1], kv_cache=kv) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert kv.length == T
    # new positions are written into storage that grows by doubling, not copied at every token
    kv = lm_core.KVCache()
    with torch.no_grad():
        model(idx[:, :1], kv_cache=kv)
        where = kv.layers[0][0].data_ptr()
        cached_k = kv.layers[0][0].clone()
        for t in range(1, T):
            model(idx[:, t : t + 1], kv_cache=kv)
    assert kv.layers[0][0].data_ptr() == where and kv.layers[0][0].shape[2] == T
    torch.testing.assert_close(kv.layers[0][0][:, :, :1], cached_k)
    # explicit path (pattern observed) agrees too, and its pattern row covers all cached keys
    kv = lm_core.KVCache()
    model(idx[:, :6], kv_cache=kv)
    logits, c = model.run_with_cache(idx[:, 6:7], kv_cache=kv)
    torch.testing.assert_close(logits, full[:, 6:7], atol=1e-5, rtol=1e-5)
    assert c["pattern", 0].shape == (B, CFG.n_head, 1, 7)



def test_last_only_and_the_unembedding_copy_give_the_last_rows_logits(model, idx):
    with torch.no_grad():
        full = model(idx)
        torch.testing.assert_close(model(idx, last_only=True), full[:, -1:], atol=1e-6, rtol=1e-6)
        kv = lm_core.KVCache(unembed_t=model.lm_head.weight.t().contiguous())
        prefill = model(idx[:, :5], kv_cache=kv, last_only=True)
        step, cache = model.run_with_cache(idx[:, 5:6], kv_cache=kv, last_only=True)
    assert prefill.shape == (B, 1, CFG.vocab_size)
    torch.testing.assert_close(prefill, full[:, 4:5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, full[:, 5:6], atol=1e-5, rtol=1e-5)
    assert cache["ln_final.hook_normalized"].shape[1] == 1 and kv.length == 6

def test_large_vocabulary_unembedding_in_slices_matches_lm_head():
    # inference on the CPU takes the sliced product once the vocabulary spans several slices
    from lm_core.model import UNEMBED_SLICE
    from lm_core.runtime import transposed_copy

    V = 4 * UNEMBED_SLICE + 37  # a last, partial slice
    m = GPT(ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=24)).eval()
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        sliced = m.unembed(x)
        full = m(torch.randint(0, V, (2, 9)))
    assert sliced.shape == (2, 9, V) and sliced.is_contiguous() and full.is_contiguous()
    torch.testing.assert_close(sliced, F.linear(x, m.lm_head.weight), atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # training: the plain lm_head, so gradients flow
        assert m.unembed(x.requires_grad_()).grad_fn is not None
    w = torch.randn(3 * UNEMBED_SLICE + 5, 700)  # large enough for the huge-page path
    assert torch.equal(transposed_copy(w), w.t().contiguous())
    assert torch.equal(transposed_copy(w[:3, :4]), w[:3, :4].t())


def test_training_mode_dropout_and_gradients():
    cfg = ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5)
    m = GPT(cfg).train()
    x = torch.randint(0, 11, (3, 8))
    loss = F.cross_entropy(m(x).view(-1, 11), x.view(-1))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert m.lm_head.weight is m.wte.weight


def test_n_params_matches_module(model):
    assert CFG.n_params == model.num_params()
    nb = ModelConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16, bias=False)
    assert nb.n_params == GPT(nb).num_params()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=130, n_head=4), "divisible by n_head"),
        (dict(n_layer=0), "n_layer must be at least 1"),
        (dict(vocab_size=-3), "vocab_size must be at least 1"),
        (dict(block_size=2.5), "block_size must be a whole number"),
        (dict(dropout=1.0), r"dropout must be in \[0.0, 1.0\)"),
        (dict(dropout=-0.1), "dropout"),
        (dict(gelu_approximate="fast"), "gelu_approximate"),
        (dict(layer_norm_eps=0), "layer_norm_eps"),
        (dict(n_layer=200, n_embd=4096, n_head=32), "B parameters"),
        (dict(block_size=100_000), "too long"),
        (dict(bias="yes"), "bias must be true or false"),
    ],
)
def test_invalid_model_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_config_round_trip_and_unknown_fields():
    cfg = ModelConfig(n_layer=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layers": 3})


def test_weights_round_trip_and_mismatch():
    a = GPT(CFG)
    b = GPT(CFG)
    b.load_weights(a.state_dict_for_save())
    x = torch.randint(0, CFG.vocab_size, (1, 5))
    torch.testing.assert_close(a(x), b(x))
    other = GPT(CFG.replace(n_embd=16))
    with pytest.raises(ValueError, match="shape"):
        other.load_weights(a.state_dict_for_save())


def test_run_with_cache_tunes_the_allocator_once(model, idx):
    from lm_core import runtime

    model.run_with_cache(idx, names=["hook_embed"])
    assert runtime._done is not None
    assert runtime.tune_allocator() == runtime._done  # idempotent


def test_threads_sharing_one_model_see_only_their_own_hooks(model):
    """One model object serves many threads (a server's sessions): each run_with_cache captures
    its own text, an ablation in one thread never reaches another thread's plain forward."""
    import threading

    lengths = [3, 5, 7, 9, 11, 12]
    inputs = {t: torch.randint(0, CFG.vocab_size, (1, t), generator=torch.Generator().manual_seed(t))
              for t in lengths}
    with torch.no_grad():
        clean = {t: model(x) for t, x in inputs.items()}
        expected = {t: model.run_with_cache(x)[1]["blocks.1.attn.hook_pattern"] for t, x in inputs.items()}
    barrier = threading.Barrier(len(lengths) + 1)
    errors: list[BaseException] = []

    def slow_zero(z, name):  # an ablation that holds the GIL long enough for threads to interleave
        for _ in range(200):
            pass
        return torch.zeros_like(z)

    def capture(t: int) -> None:
        try:
            barrier.wait()
            for _ in range(15):
                with torch.no_grad():
                    logits, cache = model.run_with_cache(inputs[t])
                    pattern = cache["blocks.1.attn.hook_pattern"]
                    assert pattern.shape == (1, CFG.n_head, t, t), pattern.shape
                    torch.testing.assert_close(pattern, expected[t])
                    torch.testing.assert_close(logits, clean[t])
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def ablate() -> None:
        try:
            barrier.wait()
            x = inputs[12]
            for _ in range(15):
                with torch.no_grad():
                    out = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_z", slow_zero)])
                assert (out - clean[12]).abs().max() > 1e-4  # this thread's own edit applies
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=capture, args=(t,)) for t in lengths[:-1]] + [threading.Thread(target=ablate)]
    for th in threads:
        th.start()
    barrier.wait()
    plain = []
    for _ in range(15):
        with torch.no_grad():
            plain.append((model(inputs[12]) - clean[12]).abs().max().item())
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors[0]
    assert max(plain) < 1e-6, "a plain forward in one thread ran another thread's hook"
    assert not any(hp.active for hp in model.hook_dict.values())


def test_hooks_attached_in_one_thread_are_invisible_in_another(model, idx):
    import threading

    seen_active = []
    with model.hooks([("blocks.0.attn.hook_pattern", lambda t, n: None)]):
        assert model.hook_dict["blocks.0.attn.hook_pattern"].active
        th = threading.Thread(target=lambda: seen_active.append(model.hook_dict["blocks.0.attn.hook_pattern"].active))
        th.start()
        th.join()
    assert seen_active == [False]
