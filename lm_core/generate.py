"""Step-by-step generation with sampling controls, a KV cache and per-step capture.

:func:`generate` yields one :class:`GenerationStep` per new token, so a UI can draw each
step as it comes. Sampling is reproducible: the same seed and settings give the same tokens
and probabilities with or without the KV cache, also after the context has passed
``block_size`` (learned absolute positions cannot be shifted, so the window is re-prefilled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

from .hooks import ActivationCache
from .model import GPT, KVCache
from .runtime import transposed_copy

Capture = Union[bool, Iterable[str], Callable[[str], bool]]
UNEMBED_COPY_MIN_TOKENS = 8  # below this many new tokens the copy costs more than it saves


@dataclass
class GenerationStep:
    """One generated token and what the model saw and thought when it drew it."""

    index: int                   # 0 for the first generated token
    token_id: int                # the token drawn
    position: int                # its index in the full sequence (prompt + generated)
    context: list[int]           # the window fed to the model, the last id predicted this token
    logits: torch.Tensor         # [vocab] raw logits of the last position (float32)
    probs: torch.Tensor          # [vocab] softmax(logits): the model's distribution at temperature 1
    sample_probs: torch.Tensor   # [vocab] what was sampled from: after temperature, top-k, top-p
    attention: torch.Tensor | None  # [L, H, T_ctx] attention row of the last context position
    cache: ActivationCache | None   # activations of the positions computed in this step
    truncated: bool              # the context passed block_size and was cut to the last block_size

    @property
    def prob(self) -> float:
        """Model probability (temperature 1) of the drawn token."""
        return float(self.probs[self.token_id])

    @property
    def entropy(self) -> float:
        """Entropy in nats of the model's distribution (temperature 1)."""
        p = self.probs.double()
        return float(-(p * torch.log(p.clamp_min(1e-30))).sum())


def sampling_distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution actually sampled from, ``[vocab]``: temperature, then top-k, then top-p.

    ``temperature == 0`` is greedy (a one-hot at the argmax). ``top_p`` keeps the smallest set
    of most likely tokens whose probability reaches ``top_p`` (always at least one).
    """
    _check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        out = torch.zeros_like(logits)
        out[int(torch.argmax(logits))] = 1.0
        return out
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        # drop a token when the tokens strictly more likely than it already reach top_p
        drop_sorted = (cum - sorted_p) >= top_p
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum()
    return probs


def _check_sampling(temperature, top_k, top_p) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1 or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def _draw(sample_probs: torch.Tensor, gen: torch.Generator) -> int:
    # Inverse-CDF sampling with one uniform per step: the same seed gives the same draw whenever
    # the distributions agree to float precision (KV cache vs recompute). The CDF runs over the
    # tokens that can be drawn only (zeros would not move it): after top-k that is k sums, not
    # the whole vocabulary's in float64.
    u = torch.rand((), generator=gen, dtype=torch.float64)
    support = torch.nonzero(sample_probs > 0).flatten()
    if support.numel() == 0:  # NaN everywhere (a diverged model): the last id, as the full CDF gave;
        return sample_probs.numel() - 1  # the trainer reports the divergence, a sample must not crash
    cdf = torch.cumsum(sample_probs[support].double(), dim=0)
    j = int(torch.searchsorted(cdf, u * cdf[-1], right=True))
    return int(support[min(j, support.numel() - 1)])


def _as_ids(ids, vocab_size: int) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2:
            if ids.shape[0] != 1:
                raise ValueError(f"generate takes one sequence: ids must be [1, T], got {tuple(ids.shape)}")
            ids = ids[0]
        ids = ids.tolist()
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("the prompt is empty: give at least one token to start from (e.g. a newline)")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id(s) {bad[:5]} are outside the vocabulary (0 .. {vocab_size - 1})")
    return ids


@torch.no_grad()
def generate(
    model: GPT,
    ids,
    max_new_tokens: int = 20,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = 0,
    capture: Capture = True,
    use_kv_cache: bool = True,
) -> Iterator[GenerationStep]:
    """Yield one :class:`GenerationStep` per new token.

    ``ids`` is a list of token ids or a LongTensor ``[1, T]``. ``capture`` is True (every
    activation), False (nothing: fastest, attention may use the fused kernel) or a list of hook
    names / a predicate; attention rows are captured whenever ``capture`` is not False.
    The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    cfg = model.config
    seq = _as_ids(ids, cfg.vocab_size)
    _check_sampling(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    gen = torch.Generator()
    if seed is None:
        gen.seed()  # fresh randomness
    else:
        gen.manual_seed(int(seed))
    if capture is True:
        names = None
    elif capture is False:
        names = False
    elif callable(capture):
        names = lambda n, f=capture: f(n) or n.endswith("hook_pattern")  # noqa: E731
    else:
        wanted = set(capture)
        names = lambda n: n in wanted or n.endswith("hook_pattern")  # noqa: E731
    was_training = model.training
    model.eval()
    B = cfg.block_size
    kv: KVCache | None = None
    # a long generation on the CPU reads the unembedding once per token: keep it in the layout
    # that reads fastest for the whole call (a copy of V x D floats, made once, dropped at the end)
    unembed_t = (transposed_copy(model.lm_head.weight.detach())
                 if use_kv_cache and max_new_tokens >= UNEMBED_COPY_MIN_TOKENS and model.device.type == "cpu" else None)
    try:
        for i in range(max_new_tokens):
            truncated = len(seq) > B
            window = seq[-B:]
            if use_kv_cache and kv is not None and not truncated and kv.length == len(seq) - 1:
                feed = window[-1:]  # only the new position; earlier keys/values are cached
            else:
                kv = KVCache(unembed_t=unembed_t) if use_kv_cache else None
                feed = window       # (re-)prefill the whole window
            idx = torch.tensor([feed], dtype=torch.long, device=model.device)
            if names is False:  # logits of the last position only: the next token is all we need
                logits, cache = model(idx, kv_cache=kv, last_only=True), None
            else:
                logits, cache = model.run_with_cache(idx, names=names, kv_cache=kv, last_only=True)
            last = logits[0, -1].float().cpu()
            probs = F.softmax(last, dim=-1)
            sample_probs = sampling_distribution(last, temperature, top_k, top_p)
            token = _draw(sample_probs, gen)
            attention = None
            if cache is not None:
                # [L, H, T_ctx]: the last query row of each layer's pattern
                attention = torch.stack(
                    [cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1, :] for l in range(cfg.n_layer)]
                )
            yield GenerationStep(
                index=i, token_id=token, position=len(seq), context=list(window), logits=last,
                probs=probs, sample_probs=sample_probs, attention=attention, cache=cache,
                truncated=truncated,
            )
            seq.append(token)
            if use_kv_cache and len(seq) > B:
                kv = None  # the next window no longer starts at position 0: re-prefill
    finally:
        model.train(was_training)


def generate_text(model: GPT, tokenizer, prompt: str, max_new_tokens: int = 200, **kwargs) -> str:
    """Convenience: the decoded continuation of ``prompt`` (no capture)."""
    kwargs.setdefault("capture", False)
    ids = tokenizer.encode(prompt)
    out = [s.token_id for s in generate(model, ids, max_new_tokens=max_new_tokens, **kwargs)]
    return tokenizer.decode(out)
