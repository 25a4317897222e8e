"""A decoder-only transformer with a named hook point at every activation worth looking at.

GPT-2's layout by default; a few switches of :class:`ModelConfig` give the layouts of today's
open models (Llama, Qwen2/3, Mistral: RMSNorm, rotary positions, SwiGLU, grouped-query
attention; GPT-NeoX/Pythia: parallel residual, partial rotary). Reads top to bottom in build
order: norm -> rotary -> attention -> MLP -> block -> GPT, as in nanoGPT. Parameter names
follow GPT-2 (``c_attn``, ``c_proj``, ``c_fc``, ``wte``, ``wpe``, ``lm_head``); activation
names follow TransformerLens (``blocks.0.attn.hook_pattern``), see the table in DESIGN §2.
Shapes: B batch, T positions, D n_embd, H heads, Hkv key/value heads, Dh head size, F MLP
width, R rotated dims per head, Tk key positions (= cached + new positions with a KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .hooks import HookedModule, HookPoint


class NormHooks(nn.Module):
    """The hook points of one norm: ``hook_scale`` [B, T, 1] and ``hook_normalized`` [B, T, D].

    ``hook_scale`` is sqrt(mean(x²) + eps) of each position (x centred first for LayerNorm),
    ``hook_normalized`` the norm's output (after its weight and bias), what the next layer reads.
    A block holds them as ``ln1`` / ``ln2`` (TransformerLens' names) beside the parameters
    ``ln_1`` / ``ln_2`` (GPT-2's names), so both vocabularies stay as they are.
    """

    def __init__(self, scale: bool = True) -> None:
        super().__init__()
        self.hook_scale = HookPoint() if scale else None
        self.hook_normalized = HookPoint()


class Norm(nn.Module):
    """LayerNorm (GPT-2, GPT-NeoX) or RMSNorm (Zhang & Sennrich 2019: no centring, no bias).

    The fused kernel runs unless someone watches ``hooks.hook_scale``; then the division is
    spelled out so the scale can be seen or edited (e.g. frozen, for attribution).
    """

    def __init__(self, ndim: int, kind: str, bias: bool, eps: float) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor, hooks: NormHooks | FinalNorm | None = None) -> torch.Tensor:
        if hooks is not None and hooks.hook_scale is not None and hooks.hook_scale.active:
            if self.kind == "layernorm":
                x = x - x.mean(-1, keepdim=True)
            scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # (B, T, 1)
            version = scale._version
            seen = hooks.hook_scale(scale)
            if seen is scale and scale._version == version and self.kind == "rmsnorm":
                y = F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # only looked at: fused, same numbers
            else:  # edited, in place or by a new tensor (e.g. frozen for attribution): divide by it
                y = x / seen * self.weight
                y = y + self.bias if self.bias is not None else y
        elif self.kind == "layernorm":
            y = F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        else:
            y = F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return hooks.hook_normalized(y) if hooks is not None else y


class FinalNorm(Norm):
    """``ln_final``: the norm before the unembedding, its output at ``ln_final.hook_normalized``
    (and, for RMSNorm, its scale at ``ln_final.hook_scale``). It is its own hook holder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.n_embd, cfg.norm, cfg.use_norm_bias, cfg.layer_norm_eps)
        self.hook_scale = HookPoint() if cfg.norm == "rmsnorm" else None  # [B, T, 1]
        self.hook_normalized = HookPoint()                                 # [B, T, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x, self)


def block_norm(cfg: ModelConfig) -> tuple[Norm, NormHooks | None]:
    """A block's norm and its hook points (RMSNorm blocks only: GPT-2's set stays as it was)."""
    norm = Norm(cfg.n_embd, cfg.norm, cfg.use_norm_bias, cfg.layer_norm_eps)
    return norm, (NormHooks() if cfg.norm == "rmsnorm" else None)


# -- rotary positions (RoPE, Su et al. 2021) ----------------------------------------------


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Angular frequency of each rotated pair, ``[R/2]``: base^(-2i/R), as GPT-NeoX and Llama.

    Llama 3.1's ``rope_scaling`` slows the low frequencies by ``factor`` (long-context
    extension) and blends smoothly between ``low_freq_factor`` and ``high_freq_factor``.
    """
    R = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, R, 2, dtype=torch.int64).float() / R))
    rs = cfg.rope_scaling
    if rs is not None:  # "llama3", the only kind ModelConfig accepts
        factor, lo, hi, ctx = (rs[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings"))
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > ctx / lo, inv_freq / factor, inv_freq)
        smooth = (ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < ctx / hi) * ~(wavelen > ctx / lo)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of each head of ``x`` [B, T, H, Dh] by its position's angles.

    ``cos``/``sin`` are [T, 1, R]. Dimension i is paired with i + R/2 ("rotate half", the
    GPT-NeoX / Hugging Face convention); the other Dh - R dims pass through unchanged.
    """
    R = cos.shape[-1]
    xr, rest = x[..., :R], x[..., R:]
    x1, x2 = xr[..., : R // 2], xr[..., R // 2 :]
    rotated = xr * cos + torch.cat((-x2, x1), dim=-1) * sin  # (B, T, H, R)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, one ``(k, v)`` pair per layer.

    Each tensor is ``[B, Hkv, T_cached, Dh]``: only the ``n_kv_head`` key/value heads are
    stored (the memory point of grouped-query attention), rotary keys already rotated to their
    absolute positions. ``GPT.forward`` appends the new positions and offsets positions and the
    causal mask by ``length``. Learned absolute positions cannot be shifted, so a caller that
    runs past ``block_size`` must start a new cache (re-prefill); ``generate`` does so for
    every layout.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)
    # Per layer, the (k, v) storage the views in ``layers`` look into: ``[B, Hkv, capacity, Dh]``,
    # grown by doubling, so a new position is written in place instead of copying the whole
    # cache into a fresh tensor at every token (no O(T²) copying, no fresh memory per token).
    _store: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)
    # Optional [D, V] contiguous copy of the unembedding for ``last_only`` steps. On a CPU the
    # one-row product x @ W reads W 1.5-1.8x faster in this layout than lm_head.weight's [V, D]
    # (bench/bench_families.py); ``generate`` makes one for a long generation and drops it after.
    unembed_t: torch.Tensor | None = None

    @property
    def length(self) -> int:
        if not self.layers or self.layers[0] is None:
            return 0
        return self.layers[0][0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Add the new positions' ``k``, ``v`` ``[B, Hkv, T, Dh]`` to ``layer``; return every
        position's keys and values (views ``[B, Hkv, Tk, Dh]``) and how many were cached before."""
        prev = self.layers[layer] if layer < len(self.layers) else None
        past = prev[0].shape[2] if prev is not None else 0
        total = past + k.shape[2]
        store = self._store[layer] if layer < len(self._store) else None
        if store is None or store[0].shape[2] < total or store[0].shape[0] != k.shape[0]:
            B, Hkv, _, Dh = k.shape
            cap = max(2 * total, 64)
            grown = (k.new_empty(B, Hkv, cap, Dh), v.new_empty(B, Hkv, cap, Dh))
            if prev is not None:
                grown[0][:, :, :past].copy_(prev[0])
                grown[1][:, :, :past].copy_(prev[1])
            store = grown
            _put(self._store, layer, store)
        store[0][:, :, past:total].copy_(k)
        store[1][:, :, past:total].copy_(v)
        kv = (store[0][:, :, :total], store[1][:, :, :total])
        _put(self.layers, layer, kv)
        return kv[0], kv[1], past


def _put(items: list, i: int, item) -> None:
    """``items[i] = item``, growing ``items`` with None up to ``i`` first."""
    items.extend([None] * (i + 1 - len(items)))
    items[i] = item


def allowed_keys(T: int, Tk: int, past: int, window: int | None, device) -> torch.Tensor:
    """[T, Tk] bool: query i (absolute position past + i) may see key j when j <= past + i and,
    with a sliding window, j > past + i - window."""
    ok = torch.ones(T, Tk, dtype=torch.bool, device=device).tril(diagonal=past)
    if window is not None and window < Tk:
        ok &= ~torch.ones(T, Tk, dtype=torch.bool, device=device).tril(diagonal=past - window)
    return ok


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        H, Hkv, Dh = self.n_head, self.n_kv_head, self.head_dim
        # q for H heads, then k and v for Hkv heads each: one matmul
        self.c_attn = nn.Linear(cfg.n_embd, (H + 2 * Hkv) * Dh, bias=cfg.use_qkv_bias)
        self.c_proj = nn.Linear(H * Dh, cfg.n_embd, bias=cfg.use_attn_out_bias)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's dims, weights shared by the heads
            self.q_norm = Norm(Dh, "rmsnorm", False, cfg.layer_norm_eps)
            self.k_norm = Norm(Dh, "rmsnorm", False, cfg.layer_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.window = cfg.sliding_window
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.hook_q = HookPoint()            # [B, T, H, Dh]  (after q_norm when qk_norm)
        self.hook_k = HookPoint()            # [B, T, Hkv, Dh]  (new positions only with a KV cache)
        self.hook_v = HookPoint()            # [B, T, Hkv, Dh]
        if cfg.pos == "rotary":
            self.hook_rot_q = HookPoint()    # [B, T, H, Dh]  q rotated to its absolute position
            self.hook_rot_k = HookPoint()    # [B, T, Hkv, Dh]
        self.hook_attn_scores = HookPoint()  # [B, H, T, Tk]  q·kᵀ/√Dh, masked entries -inf
        self.hook_pattern = HookPoint()      # [B, H, T, Tk]  softmax over keys; row = query
        self.hook_z = HookPoint()            # [B, T, H, Dh]  pattern · v, per query head

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, Dh = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([H * Dh, Hkv * Dh, Hkv * Dh], dim=2)
        q, k, v = q.view(B, T, H, Dh), k.view(B, T, Hkv, Dh), v.view(B, T, Hkv, Dh)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if rope is not None:
            q = self.hook_rot_q(apply_rotary(q, *rope))
            k = self.hook_rot_k(apply_rotary(k, *rope))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, Dh)
        past = 0
        if kv_cache is not None:  # every position's keys and values, the new ones written in place
            k, v, past = kv_cache.append(layer, k, v)  # (B, Hkv, Tk, Dh)
        Tk, G = k.shape[2], H // Hkv  # G query heads share each key/value head
        drop = self.dropout if self.training else 0.0
        windowed = self.window is not None and self.window < Tk

        if self.hook_pattern.active or self.hook_attn_scores.active:
            # Someone is watching: compute the pattern explicitly so it can be seen and edited,
            # one row per query head (key/value head h // G serves query head h). The G query
            # heads of a group are stacked as G*T rows against their one key/value head, so the
            # shared keys and values are never copied G times.
            qg, kg = q.reshape(B * Hkv, G * T, Dh), k.reshape(B * Hkv, Tk, Dh).transpose(1, 2)
            if T == 1 and not windowed:  # one new position (generation) sees every key: no mask
                scores = torch.bmm(qg, kg).mul_(1.0 / math.sqrt(Dh))
            else:
                if windowed:
                    mask = torch.zeros(T, Tk, device=x.device, dtype=q.dtype).masked_fill_(
                        ~allowed_keys(T, Tk, past, self.window, x.device), float("-inf"))
                else:  # query i sits at absolute position past + i and may see keys 0 .. past + i
                    mask = torch.full((T, Tk), float("-inf"), device=x.device, dtype=q.dtype).triu_(past + 1)
                if G > 1:
                    mask = mask.repeat(G, 1)  # (G*T, Tk)
                # the mask is added inside the matmul (baddbmm) rather than in a second pass
                scores = torch.baddbmm(mask.expand(B * Hkv, G * T, Tk), qg, kg, alpha=1.0 / math.sqrt(Dh))
            scores = scores.view(B, H, T, Tk)  # (B, H, T, Tk)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(F.softmax(scores, dim=-1))
            z = torch.bmm(self.attn_dropout(pattern).reshape(B * Hkv, G * T, Tk),
                          v.reshape(B * Hkv, Tk, Dh)).view(B, H, T, Dh)
        elif past == 0 and not windowed:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True, enable_gqa=G > 1)
        else:
            mask = allowed_keys(T, Tk, past, self.window, x.device)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, enable_gqa=G > 1)
        z = self.hook_z(z.transpose(1, 2))  # (B, T, H, Dh)
        return self.resid_dropout(self.c_proj(z.reshape(B, T, H * Dh)))


class MLP(nn.Module):
    """GELU MLP (GPT-2: ``c_fc`` -> GELU -> ``c_proj``) or SwiGLU (Llama: SiLU(``c_gate`` x) ·
    ``c_fc`` x -> ``c_proj``; Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "swiglu"
        bias, F_ = cfg.use_mlp_bias, cfg.mlp_dim
        if self.gated:
            self.c_gate = nn.Linear(cfg.n_embd, F_, bias=bias)
        self.c_fc = nn.Linear(cfg.n_embd, F_, bias=bias)
        self.c_proj = nn.Linear(F_, cfg.n_embd, bias=bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.approximate = cfg.gelu_approximate
        self.hook_pre = HookPoint()             # [B, T, F] before the activation (the gate when gated)
        if self.gated:
            self.hook_pre_linear = HookPoint()  # [B, T, F] the linear branch c_fc x
        self.hook_post = HookPoint()            # [B, T, F] after the activation (times the linear branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            h = F.silu(self.hook_pre(self.c_gate(x))) * self.hook_pre_linear(self.c_fc(x))
        else:
            h = F.gelu(self.hook_pre(self.c_fc(x)), approximate=self.approximate)
        return self.dropout(self.c_proj(self.hook_post(h)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.)).

    With ``parallel_residual`` (GPT-NeoX) the MLP reads ln_2 of the block's input x instead of
    resid_mid; resid_mid = x + attn_out is still recorded, so resid_post = resid_mid + mlp_out
    holds in every layout.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1, self.ln1 = block_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2, self.ln2 = block_norm(cfg)
        self.mlp = MLP(cfg)
        self.parallel = cfg.parallel_residual
        self.hook_resid_pre = HookPoint()   # [B, T, D]
        self.hook_attn_out = HookPoint()    # [B, T, D]
        self.hook_resid_mid = HookPoint()   # [B, T, D] = resid_pre + attn_out
        self.hook_mlp_out = HookPoint()     # [B, T, D]
        self.hook_resid_post = HookPoint()  # [B, T, D] = resid_mid + mlp_out

    def forward(self, x: torch.Tensor, rope=None, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        mid = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_1(x, self.ln1), rope, kv_cache, layer)))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln_2(x if self.parallel else mid, self.ln2)))
        return self.hook_resid_post(mid + mlp_out)


# Rows of the unembedding per slice in GPT.unembed (see there): ~1k rows kept the product's
# operands in the L2 cache for D = 576..2048 in the measurements that chose it.
UNEMBED_SLICE = 1024


class GPT(HookedModule):
    """Decoder-only language model. ``model(idx)`` maps token ids [B, T] to logits [B, T, V]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"GPT needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            self.wpe = None
        if config.pos == "rotary":  # not a weight: rebuilt from the config, never saved
            self.register_buffer("rope_inv_freq", rope_inv_freq(config), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_final = FinalNorm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # tied unembedding (Press & Wolf 2017), as GPT-2
        self.hook_embed = HookPoint()          # [B, T, D] token embeddings
        if config.pos == "learned":
            self.hook_pos_embed = HookPoint()  # [B, T, D] position embeddings
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/√(2·n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.setup_hooks()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Token ids ``[B, T]`` -> logits ``[B, T, vocab_size]`` (``[B, 1, vocab_size]``, the last
        position's, with ``last_only``: what generation needs, without T - 1 unembeddings).

        With ``kv_cache`` the ids are the *new* positions after ``kv_cache.length`` cached ones;
        the cache is extended in place. The total length may not exceed ``block_size``.
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise ValueError(f"idx must be a LongTensor of shape [B, T], got {getattr(idx, 'shape', type(idx))}")
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if T == 0:
            raise ValueError("idx is empty: give at least one token")
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than the model's context "
                f"(block_size={self.config.block_size}); cut it to the last {self.config.block_size} tokens"
            )
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.hook_embed(self.wte(idx))                                       # (B, T, D)
        if self.wpe is not None:
            x = x + self.hook_pos_embed(self.wpe(pos).unsqueeze(0).expand(B, T, -1))  # (B, T, D)
        rope = None
        if self.config.pos == "rotary":  # angles of the absolute positions past .. past + T - 1
            freqs = pos.float()[:, None] * self.rope_inv_freq.float()[None, :]  # (T, R/2)
            emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]                  # (T, 1, R)
            rope = (emb.cos().to(x.dtype), emb.sin().to(x.dtype))
        x = self.drop(x)
        for l, block in enumerate(self.blocks):
            x = block(x, rope, kv_cache=kv_cache, layer=l)
        x = self.ln_final(x)  # every position, so its hooks see them all
        if last_only and kv_cache is not None and kv_cache.unembed_t is not None:
            return x[:, -1:] @ kv_cache.unembed_t                               # (B, 1, V)
        return self.unembed(x[:, -1:] if last_only else x)                      # (B, T, V)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """``lm_head``: residual ``[..., D]`` -> logits ``[..., V]`` (the logit lens calls it too).

        Inference on the CPU with a large vocabulary computes it a slice of the vocabulary at a
        time, as W_slice · xᵀ into a small buffer then copied into place: one [T, D] x [D, V]
        product with V in the tens of thousands runs 1.3-2x slower in MKL than the same work in
        slices of ~1k rows (GPT-2 and SmolLM2 shapes at T = 16..512, bench/bench_families.py),
        and the unembedding is a quarter of a 135M model's forward. Same numbers up to float
        rounding; training (autograd) and other devices take the plain ``lm_head``.
        """
        W = self.lm_head.weight
        V, D = W.shape
        if torch.is_grad_enabled() or x.device.type != "cpu" or V < 4 * UNEMBED_SLICE or x.dtype != W.dtype:
            return self.lm_head(x)
        x2 = x.reshape(-1, D)
        N = x2.shape[0]
        out = x2.new_empty(N, V)
        buf = x2.new_empty(UNEMBED_SLICE, N)
        for i in range(0, V, UNEMBED_SLICE):
            n = min(UNEMBED_SLICE, V - i)
            torch.mm(W[i:i + n], x2.t(), out=buf[:n])  # (n, N)
            out[:, i:i + n].copy_(buf[:n].t())          # (N, n), while it is still in cache
        return out.view(*x.shape[:-1], V)

    # -- weights ---------------------------------------------------------------------------

    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        """State dict without a tied ``lm_head.weight`` duplicate (safetensors rejects shared storage)."""
        tied = self.config.tie_embeddings
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()
                if not (tied and k == "lm_head.weight")}

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load a state dict as written by :meth:`state_dict_for_save`, with clear errors."""
        expected = self.state_dict_for_save()
        tied = self.config.tie_embeddings
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected) - ({"lm_head.weight"} if tied else set()))
        if missing or unexpected:
            raise ValueError(
                f"weights do not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for k, v in expected.items():
            if tuple(tensors[k].shape) != tuple(v.shape):
                raise ValueError(f"weight {k!r} has shape {tuple(tensors[k].shape)}, the model expects {tuple(v.shape)}")
        tensors = {k: t for k, t in tensors.items() if k in expected}
        if tied:
            tensors["lm_head.weight"] = tensors["wte.weight"]
        self.load_state_dict(tensors, strict=True)

    @classmethod
    def from_hf(cls, hf_model) -> "GPT":
        """Convert an in-memory Hugging Face causal LM (GPT-2, Llama, Qwen2, Qwen3, GPT-NeoX,
        Mistral): same logits and attention patterns. Other architectures raise ``ValueError``."""
        from .pretrained import gpt_from_hf

        return gpt_from_hf(hf_model)
