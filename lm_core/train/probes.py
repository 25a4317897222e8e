"""Probes: what the trainer measures at each evaluation besides the validation loss.

A probe is an evaluation callback with a name: ``probe(model, step) -> value`` (JSON-able),
run on the main rank with the model between two optimizer steps. The trainer stores each
value by step (samples.json, head_scores.json) and shows it in its snapshot. Each probe is
seeded and uses a fixed input, so the values of different steps compare: the curve shows the
model changing, not the dice.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..data import SAMPLE_STREAM, stream_seed
from ..model import GPT


class Probe(Protocol):
    name: str

    def __call__(self, model: GPT, step: int) -> Any: ...


class SampleProbe:
    """A continuation of a newline (``tokens`` long, temperature 0.8, the same seed every time),
    so successive samples show the model's writing improve."""

    name = "sample"

    def __init__(self, tokenizer, text: str, tokens: int, seed: int) -> None:
        self.tokenizer = tokenizer
        self.prompt = "\n" if "\n" in text else text[0]
        self.tokens = tokens
        self.seed = stream_seed(seed, SAMPLE_STREAM, 0)

    def __call__(self, model: GPT, step: int) -> str:
        from ..generate import generate_text

        if self.tokens <= 0:
            return ""
        was_training = model.training
        try:
            return generate_text(model, self.tokenizer, self.prompt, max_new_tokens=self.tokens,
                                 temperature=0.8, seed=self.seed)
        finally:
            model.train(was_training)


class HeadScoreProbe:
    """Per-head scores on a fixed repeated-random-token probe: previous_token, duplicate_token,
    induction (in [0, 1]) and entropy (nats), from :func:`lm_core.analysis.probe_head_scores`
    on ids from :func:`lm_core.analysis.probe_token_ids` of the run's tokenizer. This is how
    circuits are watched forming. Returns ``{kind: [[value per head] per layer]}``, or None for
    a model whose context is too short for the probe."""

    name = "head_scores"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, model: GPT, step: int) -> dict[str, list[list[float]]] | None:
        if model.config.block_size < 4:
            return None
        from ..analysis import probe_head_scores, probe_token_ids  # analysis imports the model only: no cycle

        was_training = model.training
        try:
            scores = probe_head_scores(model, token_ids=probe_token_ids(self.tokenizer))
        finally:
            model.train(was_training)
        return {k: v.tolist() for k, v in scores.items()}
