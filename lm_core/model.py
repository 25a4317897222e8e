"""A GPT in GPT-2 layout with a named hook point at every activation worth looking at.

Reads top to bottom in build order: LayerNorm -> attention -> MLP -> block -> GPT, as in
nanoGPT. Parameter names follow GPT-2 (``c_attn``, ``c_proj``, ``c_fc``, ``wte``, ``wpe``,
``lm_head``); activation names follow TransformerLens (``blocks.0.attn.hook_pattern``), see
the table in DESIGN §2. Shapes: B batch, T positions, D n_embd, H heads, Dh head size,
Tk key positions (= cached + new positions with a KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .hooks import HookedModule, HookPoint


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1 everywhere)."""

    def __init__(self, ndim: int, bias: bool, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class FinalLayerNorm(LayerNorm):
    """``ln_final``: the LayerNorm before the unembedding, its output at ``hook_normalized``."""

    def __init__(self, ndim: int, bias: bool, eps: float) -> None:
        super().__init__(ndim, bias, eps)
        self.hook_normalized = HookPoint()  # [B, T, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(super().forward(x))


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, one ``(k, v)`` pair per layer.

    Each tensor is ``[B, H, T_cached, Dh]``. ``GPT.forward`` appends the new positions and
    offsets positions and the causal mask by ``length``. Learned absolute positions cannot be
    shifted, so a caller that runs past ``block_size`` must start a new cache (re-prefill).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)

    @property
    def length(self) -> int:
        if not self.layers or self.layers[0] is None:
            return 0
        return self.layers[0][0].shape[2]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.hook_q = HookPoint()            # [B, T, H, Dh]
        self.hook_k = HookPoint()            # [B, T, H, Dh]  (new positions only with a KV cache)
        self.hook_v = HookPoint()            # [B, T, H, Dh]
        self.hook_attn_scores = HookPoint()  # [B, H, T, Tk]  q·kᵀ/√Dh, masked entries -inf
        self.hook_pattern = HookPoint()      # [B, H, T, Tk]  softmax over keys; row = query
        self.hook_z = HookPoint()            # [B, T, H, Dh]  pattern · v, per head

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        B, T, D = x.shape
        H, Dh = self.n_head, self.head_dim
        q, k, v = self.c_attn(x).split(D, dim=2)
        q = self.hook_q(q.view(B, T, H, Dh))
        k = self.hook_k(k.view(B, T, H, Dh))
        v = self.hook_v(v.view(B, T, H, Dh))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, Dh)
        past = 0
        if kv_cache is not None:
            prev = kv_cache.layers[layer] if layer < len(kv_cache.layers) else None
            if prev is not None:
                past = prev[0].shape[2]
                k = torch.cat([prev[0], k], dim=2)  # (B, H, Tk, Dh)
                v = torch.cat([prev[1], v], dim=2)
            if layer < len(kv_cache.layers):
                kv_cache.layers[layer] = (k, v)
            else:
                kv_cache.layers.append((k, v))
        Tk = k.shape[2]
        drop = self.dropout if self.training else 0.0

        if self.hook_pattern.active or self.hook_attn_scores.active:
            # Someone is watching: compute the pattern explicitly so it can be seen and edited.
            # query i sits at absolute position past + i and may see keys 0 .. past + i;
            # the mask is added inside the matmul (baddbmm) rather than in a second pass
            mask = torch.full((T, Tk), float("-inf"), device=x.device, dtype=q.dtype).triu_(past + 1)
            scores = torch.baddbmm(
                mask.expand(B * H, T, Tk), q.reshape(B * H, T, Dh), k.reshape(B * H, Tk, Dh).transpose(1, 2),
                alpha=1.0 / math.sqrt(Dh),
            ).view(B, H, T, Tk)  # (B, H, T, Tk)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(F.softmax(scores, dim=-1))
            z = self.attn_dropout(pattern) @ v  # (B, H, T, Dh)
        elif past == 0:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            mask = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(diagonal=past)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        z = self.hook_z(z.transpose(1, 2))  # (B, T, H, Dh)
        return self.resid_dropout(self.c_proj(z.reshape(B, T, D)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.approximate = cfg.gelu_approximate
        self.hook_pre = HookPoint()   # [B, T, 4D] before GELU
        self.hook_post = HookPoint()  # [B, T, 4D] after GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hook_post(F.gelu(self.hook_pre(self.c_fc(x)), approximate=self.approximate))
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias, cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias, cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()   # [B, T, D]
        self.hook_attn_out = HookPoint()    # [B, T, D]
        self.hook_resid_mid = HookPoint()   # [B, T, D] = resid_pre + attn_out
        self.hook_mlp_out = HookPoint()     # [B, T, D]
        self.hook_resid_post = HookPoint()  # [B, T, D] = resid_mid + mlp_out

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_1(x), kv_cache=kv_cache, layer=layer)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))


class GPT(HookedModule):
    """GPT-2-layout language model. ``model(idx)`` maps token ids [B, T] to logits [B, T, V]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"GPT needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_final = FinalLayerNorm(config.n_embd, config.bias, config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied unembedding (Press & Wolf 2017), as GPT-2
        self.hook_embed = HookPoint()      # [B, T, D] token embeddings
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

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Token ids ``[B, T]`` -> logits ``[B, T, vocab_size]``.

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
        tok = self.hook_embed(self.wte(idx))                                   # (B, T, D)
        pos_emb = self.hook_pos_embed(self.wpe(pos).unsqueeze(0).expand(B, T, -1))  # (B, T, D)
        x = self.drop(tok + pos_emb)
        for l, block in enumerate(self.blocks):
            x = block(x, kv_cache=kv_cache, layer=l)
        return self.lm_head(self.ln_final(x))                                 # (B, T, V)

    # -- weights ---------------------------------------------------------------------------

    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        """State dict without the tied ``lm_head.weight`` duplicate (safetensors rejects shared storage)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k != "lm_head.weight"}

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load a state dict as written by :meth:`state_dict_for_save`, with clear errors."""
        expected = self.state_dict_for_save()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
        if missing or unexpected:
            raise ValueError(
                f"weights do not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for k, v in expected.items():
            if tuple(tensors[k].shape) != tuple(v.shape):
                raise ValueError(f"weight {k!r} has shape {tuple(tensors[k].shape)}, the model expects {tuple(v.shape)}")
        self.load_state_dict({**tensors, "lm_head.weight": tensors["wte.weight"]}, strict=True)

    @classmethod
    def from_hf(cls, hf_model) -> "GPT":
        """Convert an in-memory Hugging Face ``GPT2LMHeadModel`` (same logits and patterns)."""
        from .pretrained import gpt_from_hf

        return gpt_from_hf(hf_model)
