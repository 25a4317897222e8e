"""What the model predicts, intact, with parts switched off, or next to another model: the
Ablation and Compare pages' computations. Plain functions over lm_core, float32 numpy out.
"""

from __future__ import annotations

import numpy as np
import torch

import lm_core
from lm_core import analysis
from lm_core.data import split_chars

from .text import InputProblem


def head_label(layer: int, head: int) -> str:
    """How the app names a head: ``"L1 H3"`` (also the ablation multiselect's option)."""
    return f"L{int(layer)} H{int(head)}"


def parse_head(label: str) -> tuple[int, int]:
    """``"L1 H3"`` -> ``(1, 3)``; raises :class:`InputProblem` for anything else."""
    try:
        l, h = str(label).split()
        if l[0] != "L" or h[0] != "H":
            raise ValueError
        return int(l[1:]), int(h[1:])
    except (ValueError, IndexError):
        raise InputProblem(f"{label!r} is not a head; heads are written like 'L0 H1'.") from None


def _nll(probs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """``-log p(target)`` at each position: ``probs [T, V]``, ``targets [T-1]`` -> ``[T-1]`` float32."""
    return (-torch.log(probs[:-1].gather(1, targets[:, None]).clamp_min(1e-30))[:, 0]).numpy().astype(np.float32)


def _candidates(p1: torch.Tensor, p2: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each position, the union of the top ``k`` tokens of two distributions ``[T, V]``, most
    likely (under either) first: ids ``[T, 2k]`` (-1 pads) and both probabilities ``[T, 2k]``."""
    T, k = p1.shape[0], min(k, p1.shape[-1])
    cand = np.full((T, 2 * k), -1, dtype=np.int64)
    c1 = np.zeros((T, 2 * k), dtype=np.float32)
    c2 = np.zeros((T, 2 * k), dtype=np.float32)
    for t in range(T):
        ids = torch.unique(torch.cat([p1[t].topk(k).indices, p2[t].topk(k).indices]))
        ids = ids[torch.argsort(torch.maximum(p1[t, ids], p2[t, ids]), descending=True)]
        n = ids.numel()
        cand[t, :n], c1[t, :n], c2[t, :n] = ids.numpy(), p1[t, ids].numpy(), p2[t, ids].numpy()
    return cand, c1, c2


@torch.no_grad()
def ablation(model: lm_core.GPT, ids: list[int], heads: list[tuple[int, int]], mlps: list[int],
             mode: str, k: int = 10) -> dict[str, np.ndarray]:
    """The model on ``ids`` intact and with ``heads``/``mlps`` ablated (``analysis.ablate_heads``).

    Returns ``loss_before``/``loss_after`` (mean next-token cross-entropy over the text, nats),
    per-position ``nll_before``/``nll_after [T-1]``, and for every position the union of the top
    ``k`` next tokens before and after, ``cand_ids [T, 2k]`` (-1 pads) with their probabilities
    ``p_before``/``p_after [T, 2k]``, most likely first.
    """
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=model.device)
    before = model(idx).float()  # (1, T, V)
    after = analysis.ablate_heads(model, ids, heads=heads, mlp_layers=mlps, mode=mode).float()
    out: dict[str, np.ndarray] = {
        "loss_before": np.float32(analysis.loss_on(model, ids, before)) if len(ids) > 1 else np.float32("nan"),
        "loss_after": np.float32(analysis.loss_on(model, ids, after)) if len(ids) > 1 else np.float32("nan"),
    }
    pb, pa = torch.softmax(before[0], -1).cpu(), torch.softmax(after[0], -1).cpu()  # (T, V)
    tgt = idx[0, 1:].cpu()
    out["nll_before"], out["nll_after"] = _nll(pb, tgt), _nll(pa, tgt)
    cand, p_b, p_a = _candidates(pb, pa, k)
    out.update(cand_ids=cand, p_before=p_b, p_after=p_a)
    return out


@torch.no_grad()
def next_token_probs(model: lm_core.GPT, ids: list[int]) -> np.ndarray:
    """The model's whole next-token distribution after ``ids`` (temperature 1), ``[V]`` float32."""
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=model.device)
    return torch.softmax(model(idx)[0, -1].float(), dim=-1).cpu().numpy()


@torch.no_grad()
def ablation_distributions(model: lm_core.GPT, ids: list[int], heads: list[tuple[int, int]], mlps: list[int],
                           mode: str, pos: int) -> dict[str, np.ndarray]:
    """The whole next-token distribution at ``pos``, intact and ablated (``[V]`` float32 each): what
    the Ablation page's token search looks a typed token up in."""
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=model.device)
    before = torch.softmax(model(idx)[0, pos].float(), dim=-1).cpu().numpy()
    after = analysis.ablate_heads(model, ids, heads=heads, mlp_layers=mlps, mode=mode)
    return {"intact": before, "ablated": torch.softmax(after[0, pos].float(), dim=-1).cpu().numpy()}


def ablation_effects(model: lm_core.GPT, ids: list[int], mode: str) -> np.ndarray:
    """Loss increase on ``ids`` when each head alone is ablated, ``[L, H]`` (``analysis.head_ablation_effects``)."""
    df = analysis.head_ablation_effects(model, list(ids), mode=mode)
    L, H = model.config.n_layer, model.config.n_head
    z = np.zeros((L, H), dtype=np.float32)
    z[df["layer"].to_numpy(), df["head"].to_numpy()] = df["loss_increase"].to_numpy(dtype=np.float32)
    return z


@torch.no_grad()
def compare_predictions(model_a: lm_core.GPT, model_b: lm_core.GPT, ids: list[int], k: int = 8) -> dict[str, np.ndarray]:
    """Two models on the same tokens: ``loss_a``/``loss_b`` (mean next-token cross-entropy, nats),
    per-position ``nll_a``/``nll_b [T-1]``, and at every position the union of both models' top
    ``k`` next tokens, ``cand_ids [T, C]``, with each model's probabilities ``p_a``/``p_b [T, C]``."""
    idx = torch.tensor([ids], dtype=torch.long)
    probs = []
    for m in (model_a, model_b):
        m.eval()
        probs.append(torch.softmax(m(idx.to(m.device))[0].float(), dim=-1).cpu())  # (T, V)
    pa, pb = probs
    tgt = idx[0, 1:]
    out: dict[str, np.ndarray] = {}
    for name, p in (("a", pa), ("b", pb)):
        nll = _nll(p, tgt)
        out[f"nll_{name}"] = nll
        out[f"loss_{name}"] = np.float32(nll.mean()) if nll.size else np.float32("nan")
    cand, p_a, p_b = _candidates(pa, pb, k)
    out.update(cand_ids=cand, p_a=p_a, p_b=p_b)
    return out


VAL_WINDOWS = 4   # windows of block_size tokens: a fixed, small validation slice


def val_windows(tokenizer, text: str, block_size: int, n: int = VAL_WINDOWS) -> tuple[tuple[int, ...], ...]:
    """``n`` consecutive windows of ``block_size`` tokens from the start of the validation part of
    ``text`` (its last 10%, as the trainer holds out), for a quick, repeatable val loss."""
    _, val = split_chars(text)
    # BPE packs a few characters per token: 8 characters per needed token is plenty, and cheap to encode
    ids = tokenizer.encode(val[: n * block_size * 8])
    windows = [tuple(ids[i:i + block_size]) for i in range(0, len(ids) - block_size + 1, block_size)][:n]
    if not windows:
        raise InputProblem(f"The validation part of the corpus is shorter than one context ({block_size} tokens).")
    return tuple(windows)


def val_loss(model: lm_core.GPT, windows, heads: list[tuple[int, int]], mlps: list[int],
             mode: str) -> tuple[float, float]:
    """Mean loss over the validation windows, intact and ablated (nats per token)."""
    before, after = [], []
    for w in windows:
        before.append(analysis.loss_on(model, list(w)))
        logits = analysis.ablate_heads(model, list(w), heads=heads, mlp_layers=mlps, mode=mode)
        after.append(analysis.loss_on(model, list(w), logits))
    return float(np.mean(before)), float(np.mean(after))
