"""The app's computations on a model: plain functions over lm_core, no Streamlit.

``resources.py`` wraps the heavy ones in caches keyed by (model key, input, settings); the
views call those wrappers. Every user-facing problem is raised as :class:`InputProblem` with a
sentence that says what to do.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

import lm_core
from lm_core import analysis

from .figures import token_labels
from .state import GenTrace, StepRecord

HEAD_METRICS = {
    "induction": "induction",
    "previous_token": "previous token",
    "duplicate_token": "duplicate token",
    "entropy": "entropy (nats)",
}


class InputProblem(ValueError):
    """Bad input from the user; the message says what to do. Shown as ``st.error``/``st.warning``."""


@dataclass
class Encoded:
    ids: list[int]
    pieces: list[str]
    labels: list[str]
    note: str = ""          # non-empty when something was cut or replaced: show as a warning


def encode_text(tokenizer, text: str, block_size: int, keep: str = "start",
                what: str = "text") -> Encoded:
    """Encode ``text`` for a model with context ``block_size``.

    Empty or whitespace-only text raises :class:`InputProblem`. Longer text is cut to
    ``block_size`` tokens: ``keep="start"`` keeps the first tokens (inspection), ``"end"`` the
    last ones (a prompt); ``note`` says what was cut.
    """
    if text is None or not str(text).strip():
        raise InputProblem(f"The {what} is empty. Type or paste some text (at least one visible character).")
    ids = tokenizer.encode(text)
    if not ids:
        raise InputProblem(f"The {what} produced no tokens. Type some ordinary text.")
    note = ""
    if len(ids) > block_size:
        n = len(ids)
        if keep == "start":
            kept = ids[:block_size]
            cut_chars = len(text) - len(tokenizer.decode(kept))
            note = (f"The {what} is {n} tokens long but the model reads at most {block_size}: showing the "
                    f"first {block_size} tokens; the last {n - block_size} tokens (about {max(cut_chars, 0)} "
                    f"characters) were cut. Shorten the text to see all of it.")
        else:
            kept = ids[-block_size:]
            cut_chars = len(text) - len(tokenizer.decode(kept))
            note = (f"The {what} is {n} tokens long but the model reads at most {block_size}: it sees only "
                    f"the last {block_size} tokens; the first {n - block_size} tokens (about "
                    f"{max(cut_chars, 0)} characters) were cut.")
        ids = kept
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and unk in ids:
        n_unk = ids.count(unk)
        extra = (f"{n_unk} character(s) are not in this model's vocabulary and show as ⟨unk⟩; "
                 f"the model never saw them in training.")
        note = f"{note} {extra}".strip()
    pieces = tokenizer.pieces(ids)
    return Encoded(ids=ids, pieces=pieces, labels=token_labels(pieces), note=note)


# -- attention inspection ------------------------------------------------------------------


def _pattern_or_resid(name: str) -> bool:
    return name.endswith("hook_pattern") or name.endswith("hook_resid_pre") or name.endswith("hook_resid_post")


@torch.no_grad()
def inspect(model: lm_core.GPT, ids: list[int]) -> dict[str, np.ndarray]:
    """One forward with capture: patterns ``[L, H, T, T]``, head scores ``{metric: [L, H]}``,
    residual norms ``[L+1, T]`` and the top next-token guess per position (float32 numpy)."""
    cfg = model.config
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=model.device)
    logits, cache = model.run_with_cache(idx, names=_pattern_or_resid)
    patterns = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(cfg.n_layer)])  # (L, H, T, T)
    tokens = idx[0].cpu()
    out: dict[str, np.ndarray] = {"patterns": patterns.float().numpy()}
    for kind in analysis.HEAD_SCORE_KINDS:
        out[f"score/{kind}"] = analysis.head_scores(patterns, tokens, kind).float().numpy()
    out["score/entropy"] = analysis.attention_entropy(patterns).float().numpy()
    out["resid_norms"] = analysis.residual_norms(cache, cfg.n_layer).float().numpy()
    probs = torch.softmax(logits[0].float(), dim=-1)
    top_p, top_i = probs.max(dim=-1)
    out["next_id"] = top_i.cpu().numpy().astype(np.int64)
    out["next_p"] = top_p.cpu().numpy().astype(np.float32)
    return out


# -- embeddings -------------------------------------------------------------------------------


@torch.no_grad()
def embedding_projection(model: lm_core.GPT) -> dict[str, np.ndarray]:
    """PCA of the token embedding matrix: ``coords [V, 3]`` and ``ratio [3]`` (variance share)."""
    w = model.wte.weight.detach().float().cpu()
    k = min(3, *w.shape)
    coords, _, ratio = analysis.pca(w, k=k)
    c = coords.numpy()
    if k < 3:
        c = np.pad(c, ((0, 0), (0, 3 - k)))
        ratio = torch.cat([ratio, torch.zeros(3 - k)])
    return {"coords": c.astype(np.float32), "ratio": ratio.numpy().astype(np.float32)}


@torch.no_grad()
def neighbours(model: lm_core.GPT, token_id: int, k: int) -> tuple[list[int], np.ndarray]:
    ids, sims = analysis.nearest_neighbours(model.wte.weight.detach().float().cpu(), int(token_id), int(k))
    return [int(i) for i in ids], sims.numpy().astype(np.float32)


@torch.no_grad()
def position_similarity(model: lm_core.GPT) -> np.ndarray:
    return analysis.cosine_similarity_matrix(model.wpe.weight.detach().float().cpu()).numpy().astype(np.float32)


# -- mechanics --------------------------------------------------------------------------------


def walkthrough(model: lm_core.GPT, ids: list[int], layer: int, head: int) -> dict:
    """``lm_core.analysis.attention_walkthrough`` as float32 numpy arrays (ints kept)."""
    raw = analysis.attention_walkthrough(model, ids, layer, head)
    out = {}
    for k, v in raw.items():
        out[k] = v.numpy() if isinstance(v, torch.Tensor) else v
    return out


# -- generation ------------------------------------------------------------------------------


def sampling_settings(temperature: float, top_k: int, top_p: float, seed: int) -> dict:
    """The settings dict a trace records; ``top_k`` 0 and ``top_p`` 1 mean "off"."""
    return {
        "temperature": float(temperature),
        "top_k": int(top_k) if top_k and int(top_k) > 0 else None,
        "top_p": float(top_p) if top_p is not None and float(top_p) < 1.0 else None,
        "seed": int(seed),
    }


def step_record(step: lm_core.GenerationStep, k: int = 10) -> StepRecord:
    probs = step.probs.float()
    k = min(k, probs.numel())
    top = torch.topk(probs, k).indices.tolist()
    if step.token_id not in top:
        top.append(int(step.token_id))
    top_ids = np.array(top, dtype=np.int64)
    p = probs.double()
    ent = float(-(p * torch.log2(p.clamp_min(1e-30))).sum())
    return StepRecord(
        token_id=int(step.token_id),
        position=int(step.position),
        context_start=int(step.position - len(step.context)),
        top_ids=top_ids,
        top_before=probs[top_ids].numpy().astype(np.float32),
        top_after=step.sample_probs.float()[top_ids].numpy().astype(np.float32),
        attention=step.attention.float().numpy().astype(np.float32),
        prob=float(step.prob),
        entropy_bits=ent,
        truncated=bool(step.truncated),
    )


def _one_step(model: lm_core.GPT, ids: list[int], settings: dict, index: int) -> lm_core.GenerationStep:
    # Each step is drawn with seed + its index, so "Generate" N tokens and N presses of
    # "Next token" give the same text, and a branch continues reproducibly.
    seed = settings["seed"] + index
    it = lm_core.generate(model, ids, max_new_tokens=1, temperature=settings["temperature"],
                          top_k=settings["top_k"], top_p=settings["top_p"], seed=seed, capture=[])
    return next(iter(it))


def start_trace(model_key: str, tokenizer, prompt: str, block_size: int, settings: dict) -> GenTrace:
    """A new trace for ``prompt`` (raises :class:`InputProblem` for an empty prompt)."""
    enc = encode_text(tokenizer, prompt, block_size, keep="end", what="prompt")
    return GenTrace(model_key=model_key, prompt_ids=enc.ids, settings=dict(settings), prompt_note=enc.note)


def extend_trace(model: lm_core.GPT, trace: GenTrace, n: int, budget_s: float | None = None) -> int:
    """Generate ``n`` more tokens onto ``trace`` (in place); returns how many were added.

    ``budget_s`` stops early when the wall-clock budget is spent (a slow model stays responsive).
    """
    t0 = time.perf_counter()
    added = 0
    with torch.no_grad():
        for _ in range(n):
            step = _one_step(model, trace.ids, trace.settings, len(trace.steps))
            trace.steps.append(step_record(step))
            added += 1
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
    return added


def branch_trace(trace: GenTrace, step_index: int, token_id: int, pieces_of) -> GenTrace:
    """A copy of ``trace`` cut after step ``step_index``, whose token becomes ``token_id``."""
    if not 0 <= step_index < len(trace.steps):
        raise InputProblem(f"There is no step {step_index + 1} to branch from; generate first.")
    old = trace.steps[step_index]
    if int(token_id) not in set(int(i) for i in old.top_ids):
        raise InputProblem("Pick one of the candidates shown for this step.")
    new = StepRecord(**{**old.__dict__, "token_id": int(token_id), "branched": True,
                        "prob": float(old.top_before[list(old.top_ids).index(int(token_id))])})
    before = "".join(pieces_of([s.token_id for s in trace.steps[step_index:]]))
    note = (f"Branched at step {step_index + 1}: picked '{pieces_of([token_id])[0]}' instead of "
            f"'{pieces_of([old.token_id])[0]}' (the old continuation was '{before[:60]}').")
    return GenTrace(model_key=trace.model_key, prompt_ids=list(trace.prompt_ids),
                    settings=dict(trace.settings), steps=list(trace.steps[:step_index]) + [new],
                    prompt_note=trace.prompt_note, branch_note=note)


# -- training estimates ------------------------------------------------------------------------


def measure_step_time(cfg: lm_core.ModelConfig, batch_size: int, steps: int = 3, device: str = "auto") -> float:
    """Seconds per training step for this shape on this machine (forward, backward, AdamW),
    measured on random tokens after one warm-up step, on the device training would use."""
    from lm_core.train import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = lm_core.GPT(cfg).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size), device=dev)
    y = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size), device=dev)

    def one() -> None:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    one()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    return (time.perf_counter() - t0) / steps


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = max(0.0, float(s))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:02.0f} s"
    return f"{s // 3600:.0f} h {(s % 3600) // 60:02.0f} min"


def scores_table(ins: dict[str, np.ndarray]) -> "pd.DataFrame":
    """One row per head: layer, head and every head score (for the CSV download)."""
    import pandas as pd

    first = ins["score/entropy"]
    L, H = first.shape
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    cols = {"layer": layer.ravel(), "head": head.ravel()}
    for metric in HEAD_METRICS:
        cols[metric] = ins[f"score/{metric}"].ravel()
    return pd.DataFrame(cols)
