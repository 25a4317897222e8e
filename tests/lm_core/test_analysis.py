"""lm_core.analysis: head scores, entropy, logit lens, geometry, ablation, mechanics walkthrough."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lm_core
from lm_core import analysis as A
from lm_core.metrics import metric_names


def _model(seed: int = 0, **overrides) -> lm_core.GPT:
    """A small model with larger-than-init weights, so attention is far from uniform."""
    torch.manual_seed(seed)
    kw = dict(vocab_size=23, block_size=24, n_layer=2, n_head=3, n_embd=24)
    kw.update(overrides)
    m = lm_core.GPT(lm_core.ModelConfig(**kw))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight")):
                p.normal_(0.0, 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def model() -> lm_core.GPT:
    return _model()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.tensor([[3, 7, 1, 3, 7, 5, 9, 3, 7, 1, 2, 11, 0, 4]])


# -- reference: TransformerLens' head_detector, transcribed ----------------------------------


def _tl_duplicate(tokens: torch.Tensor) -> torch.Tensor:
    token_pattern = tokens.repeat(tokens.shape[-1], 1).numpy()
    eq_mask = np.equal(token_pattern, token_pattern.T).astype(int)
    np.fill_diagonal(eq_mask, 0)
    return torch.tril(torch.as_tensor(eq_mask).float())


def _tl_detection(tokens: torch.Tensor, kind: str) -> torch.Tensor:
    T = tokens.shape[-1]
    if kind == "previous_token":
        d = torch.zeros(T, T)
        d[1:, :-1] = torch.eye(T - 1)
        return torch.tril(d)
    dup = _tl_duplicate(tokens)
    if kind == "duplicate_token":
        return dup
    shifted = torch.roll(dup, shifts=1, dims=1)
    return torch.tril(torch.cat((torch.zeros(T, 1), shifted[:, 1:]), dim=1))


def _tl_score(pattern: torch.Tensor, detection: torch.Tensor, exclude_bos=False, exclude_current=False) -> float:
    pattern = pattern.clone()
    if exclude_bos:
        pattern[:, 0] = 0
    if exclude_current:
        pattern.fill_diagonal_(0)
    return ((pattern * detection).sum() / pattern.sum()).item()


# -- head scores ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", A.HEAD_SCORE_KINDS)
def test_detection_pattern_matches_transformer_lens(ids, kind):
    assert torch.equal(A.detection_pattern(ids[0], kind), _tl_detection(ids[0], kind))


def test_detection_patterns_by_hand():
    t = [5, 6, 5, 6]
    assert A.detection_pattern(t, "previous_token").nonzero().tolist() == [[1, 0], [2, 1], [3, 2]]
    assert A.detection_pattern(t, "duplicate_token").nonzero().tolist() == [[2, 0], [3, 1]]
    # query 2 (a 5) -> key 1 (what followed the earlier 5); query 3 (a 6) -> key 2
    assert A.detection_pattern(t, "induction").nonzero().tolist() == [[2, 1], [3, 2]]


@pytest.mark.parametrize("kind", A.HEAD_SCORE_KINDS)
@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)])
def test_head_scores_match_transformer_lens_formula(model, ids, kind, flags):
    _, cache = model.run_with_cache(ids)
    got = A.head_scores(cache, ids[0], kind, exclude_bos=flags[0], exclude_current_token=flags[1])
    det = _tl_detection(ids[0], kind)
    L, H = model.config.n_layer, model.config.n_head
    assert got.shape == (L, H)
    for l in range(L):
        for h in range(H):
            want = _tl_score(cache["pattern", l][0, h], det, *flags)
            assert got[l, h].item() == pytest.approx(want, abs=1e-6)


def test_ideal_heads_score_as_expected():
    T = 8
    prev = torch.zeros(T, T)
    prev[0, 0] = 1.0
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    # row 0 has no previous token: it counts in the mean with 0 -> (T-1)/T
    s = A.head_scores(prev, list(range(T)), "previous_token")
    assert s.shape == (1, 1) and s.item() == pytest.approx((T - 1) / T)
    # uniform causal attention: row i puts 1/(i+1) on key i-1
    uni = torch.ones(T, T).tril()
    uni = uni / uni.sum(-1, keepdim=True)
    want = sum(1 / (i + 1) for i in range(1, T)) / T
    assert A.head_scores(uni[None, None], list(range(T)), "previous_token").item() == pytest.approx(want)


def test_head_scores_rejects_bad_input(model, ids):
    _, cache = model.run_with_cache(ids)
    with pytest.raises(ValueError, match="unknown head score kind 'copying'"):
        A.head_scores(cache, ids[0], "copying")
    with pytest.raises(ValueError, match="13 tokens"):
        A.head_scores(cache, ids[0, :-1], "induction")
    _, no_patterns = model.run_with_cache(ids, names=["hook_embed"])
    with pytest.raises(ValueError, match="no attention patterns"):
        A.head_scores(no_patterns, ids[0], "induction")


def test_attention_entropy():
    T = 6
    uni = torch.ones(T, T).tril()
    uni = uni / uni.sum(-1, keepdim=True)
    onehot = torch.eye(T)
    p = torch.stack([uni, onehot])  # (H=2, T, T)
    ent = A.attention_entropy(p)
    assert ent.shape == (2,)
    assert ent[0].item() == pytest.approx(sum(math.log(i + 1) for i in range(T)) / T, rel=1e-6)
    assert ent[1].item() == 0.0  # masked zeros contribute nothing, no NaN
    assert A.attention_entropy(p[None]).shape == (1, 2)


def test_all_head_scores_agree_with_parts(model, ids):
    out = A.all_head_scores(model, ids[0].tolist())
    assert list(out) == metric_names()  # every registered metric, in the registry's order
    _, cache = model.run_with_cache(ids)
    for kind in A.HEAD_SCORE_KINDS:
        torch.testing.assert_close(out[kind], A.head_scores(cache, ids, kind))
    torch.testing.assert_close(out["entropy"], A.attention_entropy(cache))
    assert not any(v.requires_grad for v in out.values())
    table = A.head_scores_table(out)
    assert list(table.columns) == ["layer", "head", *metric_names()]
    assert len(table) == 6 and table.loc[4, "induction"] == pytest.approx(out["induction"][1, 1].item())


def test_repeated_random_tokens():
    t = A.repeated_random_tokens(50, 7, n_repeats=3, seed=4, batch=2)
    assert t.shape == (2, 21) and t.dtype == torch.long
    assert torch.equal(t[:, :7], t[:, 7:14]) and torch.equal(t[:, :7], t[:, 14:])
    assert torch.equal(t, A.repeated_random_tokens(50, 7, n_repeats=3, seed=4, batch=2))
    assert not torch.equal(t, A.repeated_random_tokens(50, 7, n_repeats=3, seed=5, batch=2))
    assert int(t.min()) >= 0 and int(t.max()) < 50
    with pytest.raises(ValueError, match="seq_len"):
        A.repeated_random_tokens(50, 0)
    pooled = A.repeated_random_tokens(50, 40, seed=4, batch=3, token_ids=[3, 17, 42])
    assert set(pooled.unique().tolist()) == {3, 17, 42}
    assert torch.equal(pooled[:, :40], pooled[:, 40:])
    with pytest.raises(ValueError, match="token_ids"):
        A.repeated_random_tokens(50, 4, token_ids=[3, 50])


def test_probe_token_ids_leave_out_the_char_tokenizers_unk():
    tok = lm_core.CharTokenizer.train("abcab")
    assert A.probe_token_ids(tok) == [0, 1, 2] and tok.unk_id == 3
    bpe = lm_core.BPETokenizer.train("hello world " * 50, vocab_size=300)
    assert A.probe_token_ids(bpe) is None


class _IdealInductionModel(nn.Module):
    """Stands in for a GPT whose head (1, 0) is a perfect induction head on repeated sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.config = lm_core.ModelConfig(vocab_size=200, block_size=40, n_layer=2, n_head=2, n_embd=8)
        self.device = torch.device("cpu")

    def run_with_cache(self, idx, names=None):
        B, T = idx.shape
        uni = torch.ones(T, T).tril()
        uni = uni / uni.sum(-1, keepdim=True)
        pats = []
        for b in range(B):
            ind = A.detection_pattern(idx[b], "induction")
            # attend to the latest induction target; rows without one attend to themselves
            ideal = torch.eye(T)
            for i in range(T):
                js = ind[i].nonzero()
                if len(js):
                    ideal[i] = 0.0
                    ideal[i, js[-1]] = 1.0
            pats.append(torch.stack([ideal, uni]))
        p = torch.stack(pats)  # (B, H, T, T)
        cache = {f"blocks.{l}.attn.hook_pattern": p if l == 1 else p.flip(1) for l in range(2)}
        return None, lm_core.ActivationCache(cache)


def test_induction_score_is_one_for_a_perfect_induction_head():
    s = A.induction_score(_IdealInductionModel(), seq_len=12, seed=1, batch=3)
    assert s.shape == (2, 2)
    assert s[1, 0].item() == pytest.approx(1.0)
    assert s[0, 1].item() == pytest.approx(1.0)   # the flipped layer holds it at head 1
    assert s[1, 1].item() < 0.25                   # uniform attention is not induction
    with pytest.raises(ValueError, match="do not fit"):
        A.induction_score(_IdealInductionModel(), seq_len=30)


def test_induction_score_on_a_model_is_seeded(model):
    a = A.induction_score(model, seq_len=10, seed=3)
    assert a.shape == (2, 3) and bool(((a >= 0) & (a <= 1)).all())
    torch.testing.assert_close(a, A.induction_score(model, seq_len=10, seed=3))
    assert model.training is False


# -- logit lens ----------------------------------------------------------------------------


def test_logit_lens_last_row_is_the_model_output(model, ids):
    lens = A.logit_lens(model, ids, top_k=4)
    L, T = model.config.n_layer, ids.shape[1]
    assert lens.labels == ["embed", "block 0", "block 1"]
    assert lens.top_ids.shape == (L + 1, T, 4) and lens.top_probs.shape == (L + 1, T, 4)
    assert lens.true_next_prob.shape == (L + 1, T - 1)
    with torch.no_grad():
        probs = F.softmax(model(ids)[0], dim=-1)  # (T, V)
    tp, ti = probs.topk(4, dim=-1)
    torch.testing.assert_close(lens.top_probs[-1], tp)
    assert torch.equal(lens.top_ids[-1], ti)
    want = probs[torch.arange(T - 1), ids[0, 1:]]
    torch.testing.assert_close(lens.true_next_prob[-1], want)
    assert torch.equal(lens.true_next_rank[-1], (probs[:-1] > want[:, None]).sum(-1))


def test_logit_lens_embed_row_reads_the_embeddings(model, ids):
    lens = A.logit_lens(model, ids[0].tolist(), top_k=2)
    T = ids.shape[1]
    with torch.no_grad():
        x = model.wte(ids) + model.wpe(torch.arange(T))
        probs = F.softmax(model.lm_head(model.ln_final(x))[0], dim=-1)
    torch.testing.assert_close(lens.top_probs[0], probs.topk(2, dim=-1).values)
    df = lens.to_frame()
    assert len(df) == 3 * T and df["true_next_prob"].isna().sum() == 3


# -- geometry ------------------------------------------------------------------------------


def test_pca_recovers_structure_and_fixes_signs():
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    scales = torch.tensor([5.0, 2.0, 1.0] + [0.01] * 7, dtype=torch.float64)
    x = (torch.randn(200, 10, generator=g, dtype=torch.float64) * scales) @ basis.T + 3.0
    coords, comps, ratio = A.pca(x.float(), k=3)
    assert coords.shape == (200, 3) and comps.shape == (3, 10) and ratio.shape == (3,)
    torch.testing.assert_close(comps @ comps.T, torch.eye(3), atol=1e-5, rtol=0)
    assert bool((ratio[:-1] >= ratio[1:]).all()) and 0.99 < ratio.sum().item() <= 1.0 + 1e-6
    for i in range(3):  # each component is a basis direction (up to sign), largest entry positive
        assert abs(float(comps[i].double() @ basis[:, i])) == pytest.approx(1.0, abs=1e-3)
        assert comps[i, comps[i].abs().argmax()] > 0
    torch.testing.assert_close(coords, (x.float() - x.float().mean(0)) @ comps.T, atol=1e-4, rtol=1e-4)
    # flipping the data keeps the components (deterministic sign) and flips the coordinates
    coords2, comps2, _ = A.pca(-x.float(), k=3)
    torch.testing.assert_close(comps2, comps)
    torch.testing.assert_close(coords2, -coords, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="k must be between 1 and"):
        A.pca(x[:2].float(), k=3)


@pytest.mark.parametrize("n", [15, 200])  # N <= 2D: SVD of the data; N > 2D: of the scatter matrix
def test_pca_matches_numpy_svd(n):
    x = torch.randn(n, 10, generator=torch.Generator().manual_seed(n)) * torch.linspace(3, 0.1, 10)
    coords, comps, ratio = A.pca(x, k=4)
    xc = x.double().numpy() - x.double().numpy().mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(ratio.numpy(), (s**2 / (s**2).sum())[:4], rtol=1e-5)
    np.testing.assert_allclose(np.abs(comps.numpy() @ vt[:4].T), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(np.abs(coords.numpy()), np.abs(xc @ vt[:4].T), atol=1e-4)


def test_procrustes_undoes_rotation_and_reflection():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(30, 3, generator=g)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    q[:, 0] *= -1  # include a reflection, like a PCA sign flip
    target = src @ q
    torch.testing.assert_close(A.procrustes_align(src, target), target, atol=1e-5, rtol=1e-5)
    noisy = target + 0.01 * torch.randn(30, 3, generator=g)
    aligned = A.procrustes_align(src, noisy)
    dist = lambda a: (a[:, None] - a[None]).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(dist(aligned), dist(src), atol=1e-5, rtol=1e-5)  # a rigid motion
    with pytest.raises(ValueError, match="same shape"):
        A.procrustes_align(src, target[:5])


def test_neighbours_and_cosine_matrix():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0], [2.0, 0.05]])
    ids, sims = A.nearest_neighbours(emb, 0, k=3)
    assert ids.tolist() == [4, 1, 3]
    torch.testing.assert_close(sims, F.cosine_similarity(emb[[4, 1, 3]], emb[0:1]))
    assert A.nearest_neighbours(emb, 0, k=99)[0].numel() == 4  # capped, itself excluded
    m = A.cosine_similarity_matrix(emb)
    want = F.cosine_similarity(emb[:, None], emb[None], dim=-1)
    torch.testing.assert_close(m, want)
    with pytest.raises(ValueError, match="token id 5 is outside"):
        A.nearest_neighbours(emb, 5)


def test_residual_norms(model, ids):
    _, cache = model.run_with_cache(ids)
    n = A.residual_norms(cache, model.config.n_layer)
    assert n.shape == (3, ids.shape[1])
    torch.testing.assert_close(n[0], (cache["hook_embed"] + cache["hook_pos_embed"])[0].norm(dim=-1))
    torch.testing.assert_close(n[2], cache["resid_post", 1][0].norm(dim=-1))
    torch.testing.assert_close(A.residual_norms(cache), n)


# -- ablation ------------------------------------------------------------------------------


def test_zero_ablation_equals_removing_weights(model, ids):
    got = A.ablate_heads(model, ids, heads=[(0, 1), (1, 2)], mlp_layers=[1])
    assert not got.requires_grad
    ref = copy.deepcopy(model)
    Dh = model.config.head_dim
    with torch.no_grad():
        ref.blocks[0].attn.c_proj.weight[:, Dh:2 * Dh] = 0  # head 1's columns of c_proj
        ref.blocks[1].attn.c_proj.weight[:, 2 * Dh:3 * Dh] = 0
        ref.blocks[1].mlp.c_proj.weight.zero_()
        ref.blocks[1].mlp.c_proj.bias.zero_()
        want = ref(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(got, model(ids), atol=1e-3)


def test_mean_ablation(model, ids):
    # on one position, the mean over positions is the value itself: nothing changes
    one = ids[:, :1]
    with torch.no_grad():
        plain = model(one)
    torch.testing.assert_close(A.ablate_heads(model, one, [(0, 0), (1, 1)], [0], mode="mean"), plain)
    # on more positions, mean ablation of a head = every position gets the mean z of that head
    _, cache = model.run_with_cache(ids)
    z_mean = cache["z", 0][0, :, 2].mean(0)  # (Dh,)

    def fix(z, name):
        z = z.clone()
        z[0, :, 2] = z_mean
        return z

    with torch.no_grad():
        want = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_z", fix)])
    torch.testing.assert_close(A.ablate_heads(model, ids, [(0, 2)], mode="mean"), want)
    with pytest.raises(ValueError, match="head 3 does not exist"):
        A.ablate_heads(model, ids, [(0, 3)])
    with pytest.raises(ValueError, match="mode must be"):
        A.ablate_heads(model, ids, [(0, 0)], mode="resample")


def test_loss_on_and_ablation_table(model, ids):
    with torch.no_grad():
        logits = model(ids)
    want = F.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert A.loss_on(model, ids) == pytest.approx(want, rel=1e-6)
    assert A.loss_on(model, ids, logits) == pytest.approx(want, rel=1e-6)
    table = A.head_ablation_effects(model, ids)
    assert list(table.columns) == ["layer", "head", "loss", "loss_increase"] and len(table) == 6
    row = table[(table["layer"] == 1) & (table["head"] == 0)].iloc[0]
    assert row["loss"] == pytest.approx(A.loss_on(model, ids, A.ablate_heads(model, ids, [(1, 0)])), rel=1e-6)
    assert row["loss_increase"] == pytest.approx(row["loss"] - want, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        A.loss_on(model, ids[:, :1])


# -- mechanics walkthrough -----------------------------------------------------------------


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 2)])
def test_walkthrough_matches_the_model_hooks(model, ids, layer, head):
    w = A.attention_walkthrough(model, ids, layer, head)
    _, cache = model.run_with_cache(ids)
    T, D = ids.shape[1], model.config.n_embd
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w["pattern"], cache["pattern", layer][0, head], **tol)
    torch.testing.assert_close(w["masked"], cache["attn_scores", layer][0, head], **tol)
    torch.testing.assert_close(w["scaled"], w["scores_raw"] * w["scale"])
    torch.testing.assert_close(w["scores_raw"], w["q"] @ w["k"].T)
    torch.testing.assert_close(w["q"], cache["q", layer][0, :, head], **tol)
    torch.testing.assert_close(w["k"], cache["k", layer][0, :, head], **tol)
    torch.testing.assert_close(w["v"], cache["v", layer][0, :, head], **tol)
    torch.testing.assert_close(w["q"], w["ln_1"] @ w["W_Q"] + w["b_Q"], **tol)
    torch.testing.assert_close(w["z"], cache["z", layer][0, :, head], **tol)
    torch.testing.assert_close(w["head_out"], w["z"] @ w["W_O"], **tol)
    # the heads' contributions plus the c_proj bias are the attention output
    torch.testing.assert_close(w["head_outputs"].sum(0) + w["c_proj_bias"], cache["attn_out", layer][0], **tol)
    torch.testing.assert_close(w["attn_out"], cache["attn_out", layer][0], **tol)
    torch.testing.assert_close(w["resid_pre"], w["tok_embed"] + w["pos_embed"] if layer == 0 else cache["resid_pre", layer][0])
    torch.testing.assert_close(w["resid_mid"], w["resid_pre"] + w["attn_out"], **tol)
    torch.testing.assert_close(w["resid_post"], w["resid_mid"] + w["mlp_out"], **tol)
    assert w["mlp_pre"].shape == (T, 4 * D) and w["logits"].shape == (T, model.config.vocab_size)
    torch.testing.assert_close(w["probs"].sum(-1), torch.ones(T))
    assert torch.isinf(w["masked"].triu(1)[0, 1]) and float(w["pattern"].triu(1).abs().sum()) == 0.0


def test_walkthrough_rejects_missing_head_and_restores_mode(ids):
    m = _model(seed=1).train()
    A.attention_walkthrough(m, ids, 0, 0)
    assert m.training
    with pytest.raises(ValueError, match="layer 2 does not exist"):
        A.attention_walkthrough(m, ids, 2, 0)
    with pytest.raises(ValueError, match="longer than the model's context"):
        A.logit_lens(m, torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token id\(s\) \[23\]"):
        A.logit_lens(m, [1, 23])


def test_probe_head_scores_fixed_probe_and_perfect_heads():
    import lm_core
    from lm_core.analysis import probe_head_scores

    cfg = lm_core.ModelConfig(vocab_size=50, block_size=24, n_layer=1, n_head=2, n_embd=16)
    model = lm_core.GPT(cfg).eval()
    a = probe_head_scores(model, seed=3)
    b = probe_head_scores(model, seed=3)
    assert list(a) == metric_names()
    for k in a:
        assert a[k].shape == (1, 2)
        torch.testing.assert_close(a[k], b[k])
    # head 0 a perfect previous-token head, head 1 a perfect induction head
    seq_len = 12
    T = 2 * seq_len
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(0, T - 1)] = 1
    ind = torch.zeros(T, T)
    ind[:seq_len] = prev[:seq_len]
    ind[torch.arange(seq_len, T), torch.arange(seq_len, T) - seq_len + 1] = 1

    def force(pattern, name):
        out = pattern.clone()
        out[:, 0] = prev
        out[:, 1] = ind
        return out

    with model.hooks([("blocks.0.attn.hook_pattern", force)]):
        s = probe_head_scores(model, seed=0)
    assert s["previous_token"][0, 0] > 0.95
    assert s["induction"][0, 1] > 0.99
    assert s["induction"][0, 0] < 0.2
    assert s["entropy"][0, 0] < 1e-4
