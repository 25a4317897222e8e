"""The model's arithmetic spelled out, for every layout: the Mechanics walkthrough, rotary
positions by relative distance, and which query heads share a key/value head.

:func:`attention_walkthrough` redoes one block's computation from the weights, step by step and
in the model's own layout (LayerNorm or RMSNorm, learned / rotary / no positions, q/k norm,
grouped-query heads, GELU or SwiGLU MLP, sequential or parallel residual), so a page can show
each step with its real numbers; the tests check every step against the model's own hooks.
Pages read the layout from :func:`layout` rather than from the config's fields, so a new family
changes this file and not the pages.

Shapes: T positions, D ``n_embd``, H query heads, Hkv key/value heads, Dh head size, R rotated
dims per head (pairs ``(i, i + R/2)``), F MLP width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .analysis import _as_idx, _check_layer_head, _inference
from .config import ModelConfig
from .model import GPT, allowed_keys, apply_rotary, rope_inv_freq

__all__ = ["Layout", "attention_walkthrough", "kv_groups", "kv_head_of", "layout", "rotary_profile"]


@dataclass(frozen=True)
class Layout:
    """The family-defining choices of a model, in words a page can show as they are."""

    norm: str                 # "layernorm" | "rmsnorm"
    norm_name: str            # "LayerNorm" | "RMSNorm"
    pos: str                  # "learned" | "rotary" | "none"
    pos_name: str             # "learned position embedding" | "rotary (RoPE)" | "no position signal"
    mlp: str                  # "gelu" | "swiglu"
    mlp_name: str             # "GELU MLP" | "SwiGLU MLP"
    n_head: int
    n_kv_head: int
    attention_name: str       # "multi-head" | "grouped-query (G query heads per key/value head)" | "multi-query"
    parallel_residual: bool
    qk_norm: bool
    rotary_dim: int           # dims of each head that rotary rotates (0 without rotary)
    head_dim: int
    sliding_window: int | None
    tied: bool                # lm_head shares the token embedding matrix

    def summary(self) -> str:
        """One line: "RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query (2 query heads per key/value head)"."""
        parts = [self.norm_name, self.pos_name if self.pos != "rotary" or self.rotary_dim == self.head_dim
                 else f"{self.pos_name} on {self.rotary_dim} of {self.head_dim} dims", self.mlp_name, self.attention_name]
        if self.qk_norm:
            parts.append("q/k norm")
        if self.parallel_residual:
            parts.append("parallel attention + MLP")
        if self.sliding_window is not None:
            parts.append(f"sliding window {self.sliding_window}")
        return " · ".join(parts)


def layout(config: ModelConfig) -> Layout:
    """The :class:`Layout` of a :class:`ModelConfig` (or of ``model.config``)."""
    c = config.config if isinstance(config, GPT) else config
    H, Hkv = c.n_head, c.kv_heads
    if Hkv == H:
        attn = "multi-head"
    elif Hkv == 1:
        attn = "multi-query (every query head shares one key/value head)"
    else:
        attn = f"grouped-query ({H // Hkv} query heads per key/value head)"
    return Layout(
        norm=c.norm, norm_name="RMSNorm" if c.norm == "rmsnorm" else "LayerNorm",
        pos=c.pos, pos_name={"learned": "learned position embedding", "rotary": "rotary (RoPE)",
                             "none": "no position signal"}[c.pos],
        mlp=c.mlp, mlp_name="SwiGLU MLP" if c.mlp == "swiglu" else "GELU MLP",
        n_head=H, n_kv_head=Hkv, attention_name=attn, parallel_residual=c.parallel_residual,
        qk_norm=c.qk_norm, rotary_dim=c.rotary_dim, head_dim=c.head_dim, sliding_window=c.sliding_window,
        tied=c.tie_embeddings,
    )


def kv_head_of(config: ModelConfig, head: int) -> int:
    """The key/value head query head ``head`` reads: ``head // (n_head / n_kv_head)``, as the model."""
    c = config.config if isinstance(config, GPT) else config
    return int(head) // (c.n_head // c.kv_heads)


def kv_groups(config: ModelConfig) -> list[list[int]]:
    """The query heads of each key/value head: ``groups[g]`` lists the query heads that share
    key/value head ``g`` (one head each for multi-head attention)."""
    c = config.config if isinstance(config, GPT) else config
    G = c.n_head // c.kv_heads
    return [list(range(g * G, (g + 1) * G)) for g in range(c.kv_heads)]


def _norm_steps(norm, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A norm spelled out on ``x`` [T, D]: ``centred`` (x - mean for LayerNorm, x for RMSNorm),
    ``scale`` [T] = sqrt(mean(centred²) + eps), ``out`` [T, D] = centred / scale · g (+ b)."""
    c = x - x.mean(-1, keepdim=True) if norm.kind == "layernorm" else x
    scale = (c.pow(2).mean(-1) + norm.eps).sqrt()  # (T,)
    y = c / scale[:, None] * norm.weight
    if norm.bias is not None:
        y = y + norm.bias
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
    return {"centred": c, "scale": scale, "out": y, "weight": norm.weight, "bias": bias}


def _rope(model: GPT, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(angles [T, R/2], cos [T, 1, R], sin [T, 1, R]) of positions 0 .. T-1, as the model builds them."""
    if model.config.pos != "rotary":
        return None
    inv = model.rope_inv_freq.float()
    angles = torch.arange(T, device=inv.device).float()[:, None] * inv[None, :]  # (T, R/2)
    emb = torch.cat((angles, angles), dim=-1)[:, None, :]  # (T, 1, R)
    return angles, emb.cos(), emb.sin()


def attention_walkthrough(model: GPT, idx, layer: int, head: int) -> dict:
    """Every intermediate of block ``layer``'s computation, seen from query head ``head``, with the
    model's real numbers in the model's own layout.

    Redone here from the weights so each step can be shown; the tests check it against the
    model's hooks for every family. Tensors are float32 on the CPU, batch dropped; rows are
    positions. Keys (``h`` = ``head``, ``g`` = the key/value head it reads):

    * Layout: ``layer``, ``head``, ``kv_head`` (g), ``group`` (the query heads sharing g),
      ``n_kv_head``, ``head_dim``, ``scale`` (1/√Dh), ``rotary_dim``, ``layout`` (:class:`Layout`).
    * ``tokens`` [T]; ``tok_embed`` [T, D]; ``pos_embed`` [T, D] only with learned positions;
      ``resid_pre`` [T, D] (x, the input of the block).
    * The first norm: ``ln_1`` [T, D] (what attention reads), ``ln1_centred`` [T, D] (x - mean for
      LayerNorm, x itself for RMSNorm), ``ln1_scale`` [T] (√(mean(centred²) + eps): the std for
      LayerNorm, the RMS for RMSNorm), ``ln1_weight`` g and ``ln1_bias`` [D] (zeros without).
    * ``W_Q`` [D, Dh] and ``b_Q`` [Dh] of head h, ``W_K``, ``W_V``, ``b_K``, ``b_V`` of key/value head
      g (zero biases without); ``q_proj``, ``k_proj``, ``v`` [T, Dh] = ``ln_1 @ W + b``.
    * ``q``, ``k`` [T, Dh]: with ``qk_norm`` the RMSNorm of ``q_proj`` / ``k_proj`` over the head's
      dims (weights ``q_norm_weight``, ``k_norm_weight`` [Dh]); else equal to them. As ``hook_q`` /
      ``hook_k``.
    * Rotary only: ``inv_freq`` [R/2] (angle per position of each pair (i, i + R/2)),
      ``angles`` [T, R/2] (= position · inv_freq), ``q_rot``, ``k_rot`` [T, Dh] (q, k rotated by
      their position; dims from R on pass unchanged), as ``hook_rot_q`` / ``hook_rot_k``.
    * ``scores_raw`` [T, T] = q_rot·k_rotᵀ (q·kᵀ without rotary); ``scaled`` = · 1/√Dh;
      ``masked`` = scaled with -inf where a key is after the query (or out of the sliding
      window); ``pattern`` [T, T] = softmax over keys; ``z`` [T, Dh] = pattern @ v.
    * ``W_O`` [Dh, D]; ``head_out`` [T, D] = z @ W_O; ``head_outputs`` [H, T, D] every head's;
      ``c_proj_bias`` [D]; ``attn_out`` [T, D] = Σ_h head_outputs + c_proj_bias.
    * ``resid_mid`` [T, D] = resid_pre + attn_out. The second norm reads ``mlp_in`` [T, D]
      (resid_mid, or resid_pre with a parallel residual): ``ln_2``, ``ln2_scale``, …
      as for the first.
    * MLP: ``mlp_pre`` [T, F] (GELU: W_fc·ln_2 + b before GELU; SwiGLU: the gate W_gate·ln_2 + b
      before SiLU), ``mlp_pre_linear`` [T, F] (SwiGLU only: the linear branch W_fc·ln_2 + b),
      ``mlp_post`` [T, F] (GELU(pre), or SiLU(gate) ⊙ linear), ``mlp_out`` [T, D] = W_proj·post + b;
      ``resid_post`` [T, D] = resid_mid + mlp_out.
    * ``final_scale`` [T] of ``ln_final`` at the last block's output; ``logits`` [T, V] of the
      whole model, ``probs`` [T, V] their softmax (temperature 1): row t predicts token t + 1.
    """
    _check_layer_head(model, layer, head)
    idx = _as_idx(model, idx)
    cfg = model.config
    lay = layout(cfg)
    D, H, Hkv, Dh = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim
    g = kv_head_of(cfg, head)
    G = H // Hkv
    block = model.blocks[layer]
    attn, mlp = block.attn, block.mlp
    pre = f"blocks.{layer}."
    names = ["hook_embed", pre + "hook_resid_pre", f"blocks.{cfg.n_layer - 1}.hook_resid_post"]
    if cfg.pos == "learned":
        names.append("hook_pos_embed")
    with _inference(model):
        logits, cache = model.run_with_cache(idx, names=names)
        dev = model.device
        x = cache[pre + "hook_resid_pre"].to(dev)[0].float()  # (T, D)
        T = x.shape[0]
        n1 = _norm_steps(block.ln_1, x)
        ln1 = n1["out"]  # (T, D)
        W = attn.c_attn.weight  # ((H + 2 Hkv) Dh, D): nn.Linear computes ln1 @ W.T
        b = attn.c_attn.bias if attn.c_attn.bias is not None else torch.zeros(W.shape[0], device=dev)
        Wq, Wk, Wv = W.split([H * Dh, Hkv * Dh, Hkv * Dh], dim=0)
        bq, bk, bv = b.split([H * Dh, Hkv * Dh, Hkv * Dh], dim=0)
        q_proj = (ln1 @ Wq.T + bq).view(T, H, Dh)    # (T, H, Dh)
        k_proj = (ln1 @ Wk.T + bk).view(T, Hkv, Dh)  # (T, Hkv, Dh)
        v_all = (ln1 @ Wv.T + bv).view(T, Hkv, Dh)   # (T, Hkv, Dh)
        if cfg.qk_norm:
            q_all, k_all = attn.q_norm(q_proj), attn.k_norm(k_proj)
        else:
            q_all, k_all = q_proj, k_proj
        rope = _rope(model, T)
        if rope is not None:
            angles, cos, sin = rope
            q_rot, k_rot = apply_rotary(q_all, cos, sin), apply_rotary(k_all, cos, sin)
        else:
            q_rot, k_rot = q_all, k_all
        qh = q_rot.transpose(0, 1)  # (H, T, Dh)
        kh = k_rot.transpose(0, 1).repeat_interleave(G, dim=0)  # (H, T, Dh): query head h reads kv head h // G
        vh = v_all.transpose(0, 1).repeat_interleave(G, dim=0)  # (H, T, Dh)
        scale = 1.0 / math.sqrt(Dh)
        raw = qh @ kh.transpose(-2, -1)  # (H, T, T) query rows, key columns
        scaled = raw * scale
        ok = allowed_keys(T, T, 0, cfg.sliding_window, dev)  # (T, T) causal (and windowed)
        masked = scaled.masked_fill(~ok, float("-inf"))
        pattern = F.softmax(masked, dim=-1)  # (H, T, T)
        z_all = pattern @ vh  # (H, T, Dh)
        W_O_all = attn.c_proj.weight.T.reshape(H, Dh, D)  # (H, Dh, D): rows of head h
        head_outputs = z_all @ W_O_all  # (H, T, D)
        c_proj_bias = attn.c_proj.bias if attn.c_proj.bias is not None else torch.zeros(D, device=dev)
        attn_out = head_outputs.sum(dim=0) + c_proj_bias  # (T, D)
        mid = x + attn_out
        mlp_in = x if cfg.parallel_residual else mid  # GPT-NeoX: both branches read the block input
        n2 = _norm_steps(block.ln_2, mlp_in)
        ln2 = n2["out"]

        def lin(layer_, t):
            return t @ layer_.weight.T + (layer_.bias if layer_.bias is not None else 0.0)

        out: dict = {}
        if cfg.mlp == "swiglu":
            gate, linear = lin(mlp.c_gate, ln2), lin(mlp.c_fc, ln2)  # (T, F)
            post = F.silu(gate) * linear
            out["mlp_pre"], out["mlp_pre_linear"] = gate, linear
        else:
            pre_act = lin(mlp.c_fc, ln2)  # (T, F)
            post = F.gelu(pre_act, approximate=cfg.gelu_approximate)
            out["mlp_pre"] = pre_act
        mlp_out = lin(mlp.c_proj, post)  # (T, D)
        last = cache[f"blocks.{cfg.n_layer - 1}.hook_resid_post"].to(dev)[0].float()
        final_scale = _norm_steps(model.ln_final, last)["scale"]

        sq, skv = slice(head * Dh, (head + 1) * Dh), slice(g * Dh, (g + 1) * Dh)
        out.update({
            "tokens": idx[0], "tok_embed": cache["hook_embed"][0], "resid_pre": x,
            "ln_1": ln1, "ln1_centred": n1["centred"], "ln1_scale": n1["scale"],
            "ln1_weight": n1["weight"], "ln1_bias": n1["bias"],
            "W_Q": Wq[sq].T, "W_K": Wk[skv].T, "W_V": Wv[skv].T, "b_Q": bq[sq], "b_K": bk[skv], "b_V": bv[skv],
            "q_proj": q_proj[:, head], "k_proj": k_proj[:, g], "q": q_all[:, head], "k": k_all[:, g],
            "v": v_all[:, g],
            "scores_raw": raw[head], "scaled": scaled[head], "masked": masked[head], "pattern": pattern[head],
            "z": z_all[head], "W_O": W_O_all[head], "head_out": head_outputs[head], "head_outputs": head_outputs,
            "c_proj_bias": c_proj_bias, "attn_out": attn_out, "resid_mid": mid, "mlp_in": mlp_in,
            "ln_2": ln2, "ln2_centred": n2["centred"], "ln2_scale": n2["scale"],
            "ln2_weight": n2["weight"], "ln2_bias": n2["bias"],
            "mlp_post": post, "mlp_out": mlp_out, "resid_post": mid + mlp_out,
            "final_scale": final_scale, "logits": logits[0], "probs": F.softmax(logits[0].float(), dim=-1),
        })
        if cfg.pos == "learned":
            out["pos_embed"] = cache["hook_pos_embed"][0]
        if cfg.qk_norm:
            out["q_norm_weight"], out["k_norm_weight"] = attn.q_norm.weight, attn.k_norm.weight
        if rope is not None:
            out["inv_freq"], out["angles"] = model.rope_inv_freq, angles
            out["q_rot"], out["k_rot"] = q_rot[:, head], k_rot[:, g]
        result = {k: v.detach().float().cpu() for k, v in out.items()}
    result["tokens"] = idx[0].cpu()
    result.update(layer=layer, head=head, kv_head=g, group=list(range(g * G, (g + 1) * G)), n_kv_head=Hkv,
                  head_dim=Dh, scale=scale, rotary_dim=cfg.rotary_dim, layout=lay)
    return result


def rotary_profile(model_or_config, max_distance: int | None = None) -> dict[str, np.ndarray] | None:
    """What positions mean in a rotary model, as plain arrays; ``None`` without rotary positions.

    * ``inv_freq`` [R/2]: the angle (radians) by which pair ``i`` of dims ``(i, i + R/2)`` of q and
      k turns per position; ``wavelength`` [R/2] = 2π / inv_freq, the positions it takes to turn
      once (fast pairs see neighbours, slow pairs see far).
    * ``distance`` [N] = 0 .. max_distance (default ``block_size - 1``) and ``score`` [N]: the
      dot product of a fixed q and k (all ones on the rotated dims) after rotating them to
      positions ``m + distance`` and ``m``, divided by its value at distance 0. Rotary makes it a
      function of the distance alone, Σ_i cos(distance · inv_freq_i) / (R/2): 1 at distance 0,
      oscillating and (on average) decaying further away.
    * ``rotary_dim`` (R) and ``head_dim`` as 0-d arrays.
    """
    cfg = model_or_config.config if isinstance(model_or_config, GPT) else model_or_config
    if cfg.pos != "rotary":
        return None
    n = cfg.block_size - 1 if max_distance is None else int(max_distance)
    if n < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance!r}")
    inv = rope_inv_freq(cfg).double()  # (R/2,)
    dist = torch.arange(n + 1, dtype=torch.float64)
    score = torch.cos(dist[:, None] * inv[None, :]).mean(dim=1)  # (N,)
    return {
        "inv_freq": inv.float().numpy(),
        "wavelength": (2 * math.pi / inv).float().numpy(),
        "distance": dist.numpy().astype(np.int64),
        "score": score.float().numpy(),
        "rotary_dim": np.int64(cfg.rotary_dim),
        "head_dim": np.int64(cfg.head_dim),
    }
