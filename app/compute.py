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


MAX_INSPECT_TOKENS = 256   # pages that keep every layer's attention: 12 × 12 heads × 256² is 38 MB


def inspect_limit(cfg: lm_core.ModelConfig) -> dict:
    """How many tokens the inspection pages read and why that many: ``encode_text`` keywords.

    The model's context, capped at :data:`MAX_INSPECT_TOKENS`: a GPT-2 (context 1024, 12 × 12
    heads) would otherwise keep 600 MB of attention patterns per text."""
    if cfg.block_size <= MAX_INSPECT_TOKENS:
        return {"block_size": cfg.block_size, "limit": "the model reads"}
    return {"block_size": MAX_INSPECT_TOKENS, "limit": f"this page shows (of the model's {cfg.block_size})"}


def encode_text(tokenizer, text: str, block_size: int, keep: str = "start",
                what: str = "text", limit: str = "the model reads") -> Encoded:
    """Encode ``text`` for a model with context ``block_size``.

    Empty or whitespace-only text raises :class:`InputProblem`. Longer text is cut to
    ``block_size`` tokens: ``keep="start"`` keeps the first tokens (inspection), ``"end"`` the
    last ones (a prompt); ``note`` says what was cut, and ``limit`` who reads only that many.
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
            note = (f"The {what} is {n} tokens long but {limit} at most {block_size}: showing the "
                    f"first {block_size} tokens; the last {n - block_size} tokens (about {max(cut_chars, 0)} "
                    f"characters) were cut. Shorten the text to see all of it.")
        else:
            kept = ids[-block_size:]
            cut_chars = len(text) - len(tokenizer.decode(kept))
            note = (f"The {what} is {n} tokens long but {limit} at most {block_size}: it sees only "
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
def embedding_projection(model: lm_core.GPT, reference: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """PCA of the token embedding matrix: ``coords [V, 3]``, ``coords2 [V, 2]`` and ``ratio [3]``.

    ``ratio`` is each component's share of the variance. With ``reference`` (the projection of
    the run's final weights, as returned here) the coordinates are rotated/reflected onto it
    (``analysis.procrustes_align``; 3D and 2D each on their own), so a token keeps its place
    between training steps instead of jumping or flipping; ``aligned`` is then 1.
    """
    w = model.wte.weight.detach().float().cpu()
    k = min(3, *w.shape)
    coords, _, ratio = analysis.pca(w, k=k)
    c = coords.numpy()
    if k < 3:
        c = np.pad(c, ((0, 0), (0, 3 - k)))
        ratio = torch.cat([ratio, torch.zeros(3 - k)])
    c2 = c[:, :2]
    aligned = 0.0
    if reference is not None and reference["coords"].shape == c.shape:
        c = analysis.procrustes_align(torch.from_numpy(c), torch.from_numpy(reference["coords"])).numpy()
        c2 = analysis.procrustes_align(torch.from_numpy(np.ascontiguousarray(c2)),
                                       torch.from_numpy(np.ascontiguousarray(reference["coords2"]))).numpy()
        aligned = 1.0
    return {"coords": c.astype(np.float32), "coords2": np.ascontiguousarray(c2, dtype=np.float32),
            "ratio": ratio.numpy().astype(np.float32), "aligned": np.float32(aligned)}


@torch.no_grad()
def neighbours(model: lm_core.GPT, token_id: int, k: int) -> tuple[list[int], np.ndarray]:
    ids, sims = analysis.nearest_neighbours(model.wte.weight.detach().float().cpu(), int(token_id), int(k))
    return [int(i) for i in ids], sims.numpy().astype(np.float32)


@torch.no_grad()
def position_similarity(model: lm_core.GPT) -> np.ndarray:
    return analysis.cosine_similarity_matrix(model.wpe.weight.detach().float().cpu()).numpy().astype(np.float32)


# -- logit lens --------------------------------------------------------------------------------


def logit_lens(model: lm_core.GPT, ids: list[int], top_k: int = 5) -> dict[str, np.ndarray]:
    """``analysis.logit_lens`` as numpy: ``top_ids``/``top_probs [R, T, k]`` (R = L + 1 layer
    boundaries, the last = the model's own output), ``true_p``/``true_rank [R, T-1]``, ``labels [R]``."""
    lens = analysis.logit_lens(model, list(ids), top_k=int(top_k))
    return {
        "labels": np.array(lens.labels),
        "top_ids": lens.top_ids.numpy().astype(np.int64),
        "top_probs": lens.top_probs.float().numpy().astype(np.float32),
        "true_p": lens.true_next_prob.float().numpy().astype(np.float32),
        "true_rank": lens.true_next_rank.numpy().astype(np.int64),
    }


# -- ablation ----------------------------------------------------------------------------------


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
    from lm_core.data import VAL_FRACTION

    val = text[int(len(text) * (1 - VAL_FRACTION)):]
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


def start_trace(model_key: str, tokenizer, prompt: str, block_size: int, settings: dict,
                model_family: str = "") -> GenTrace:
    """A new trace for ``prompt`` (raises :class:`InputProblem` for an empty prompt)."""
    enc = encode_text(tokenizer, prompt, block_size, keep="end", what="prompt")
    return GenTrace(model_key=model_key, prompt_ids=enc.ids, settings=dict(settings), prompt_note=enc.note,
                    model_family=model_family)


def replay_trace(model: lm_core.GPT, trace: GenTrace, model_key: str, budget_s: float | None = None) -> GenTrace:
    """The same generation (prompt, settings, seed, length) redone with other weights of the same
    run: what time travel shows on the Generate page. Branch choices are not replayed."""
    new = GenTrace(model_key=model_key, prompt_ids=list(trace.prompt_ids), settings=dict(trace.settings),
                   prompt_note=trace.prompt_note, model_family=trace.model_family)
    extend_trace(model, new, len(trace.steps), budget_s=budget_s)
    return new


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
                    prompt_note=trace.prompt_note, branch_note=note, model_family=trace.model_family)


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
