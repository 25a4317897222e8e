"""A generation as the Generate page keeps it: a trace of small per-step records, grown one
token at a time, replayed with other weights, or branched at a step. No Streamlit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import lm_core

from .text import InputProblem, encode_text


@dataclass
class StepRecord:
    """What the Generate page keeps of one generated step (small numpy arrays only)."""

    token_id: int
    position: int               # index of the new token in the full sequence
    context_start: int          # absolute position of the first context token
    top_ids: np.ndarray         # [k] candidate ids, most likely (model, T=1) first
    top_before: np.ndarray      # [k] model probability at temperature 1
    top_after: np.ndarray       # [k] probability actually sampled from
    attention: np.ndarray       # [L, H, T_ctx] float32 attention row of the predicting position
    prob: float                 # model probability of the drawn token
    entropy_bits: float         # entropy of the model distribution, bits
    truncated: bool
    branched: bool = False      # the user picked this token instead of the drawn one


@dataclass
class GenTrace:
    """A generation: the prompt, its settings and one record per generated token."""

    model_key: str
    prompt_ids: list[int]
    settings: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    prompt_note: str = ""       # e.g. "the prompt was cut to the last 64 tokens"
    branch_note: str = ""
    model_family: str = ""      # the run the weights came from, whatever the step (time travel)

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + [s.token_id for s in self.steps]


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


def first_candidates(probs, settings: dict, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Before any token is drawn: the ``k`` most likely tokens after the prompt (ids), the model's
    probability of each (temperature 1) and the probability each would be sampled with under
    ``settings`` (temperature, top-k, top-p), from the model's next-token ``probs`` [V]."""
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    after = lm_core.sampling_distribution(torch.log(p.clamp_min(1e-30)), settings["temperature"],
                                          settings["top_k"], settings["top_p"])
    top = torch.topk(p, min(k, p.numel())).indices
    return top.numpy().astype(np.int64), p[top].numpy(), after[top].float().numpy()


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
