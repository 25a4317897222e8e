"""Training checkpoints published on the hub, as time travel for a real language model.

Pythia (EleutherAI) publishes each model's training checkpoints as branches of its hub repo:
``step0``, ``step1``, ``step2``, ``step4`` … ``step512``, ``step1000``, ``step2000`` …
``step143000`` (154 in all). :func:`list_step_revisions` lists them, :func:`load_revision`
loads one (through :func:`lm_core.load_pretrained`: cached, offline once cached), and
:func:`head_scores_over_revisions` scores every head at each of them with the same probe LM Lens
uses for its own runs (:func:`lm_core.analysis.probe_head_scores`), so the "circuits forming"
curves can be drawn for Pythia too. ::

    revs = list_step_revisions("EleutherAI/pythia-70m")          # [HubRevision("step0", 0, …), …]
    for r in head_scores_over_revisions("EleutherAI/pythia-70m", [revs[0], revs[-1]]):
        r.step, r.scores["induction"]                            # [L, H] per revision
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import analysis
from .model import GPT
from .pretrained import _hub_unreachable, load_pretrained
from .tokenizers import BPETokenizer

__all__ = ["HubRevision", "RevisionScores", "list_step_revisions", "load_revision",
           "head_scores_over_revisions", "revision_scores_frame"]

log = logging.getLogger(__name__)

_STEP = re.compile(r"step(\d+)")


@dataclass(frozen=True)
class HubRevision:
    """A branch ``step<N>`` of a hub repo: the weights after ``step`` optimizer steps."""

    name: str              # the branch, e.g. "step1000" (what load_pretrained's revision takes)
    step: int              # 1000
    commit: str | None     # the commit it points to (None when listed from the cache alone)


def _cached_refs(name: str) -> list[HubRevision]:
    """Branches of ``name`` that the local Hugging Face cache knows (each loaded at least once)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    refs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model") / "refs"
    out = []
    if refs.is_dir():
        for f in refs.iterdir():
            m = _STEP.fullmatch(f.name)
            if m and f.is_file():
                out.append(HubRevision(f.name, int(m.group(1)), f.read_text().strip() or None))
    return out


def list_step_revisions(name: str) -> list[HubRevision]:
    """The training-step branches (``step<N>``) of hub repo ``name``, in step order.

    Asks the hub (``huggingface_hub.list_repo_refs``). Offline (``HF_HUB_OFFLINE``) or with the
    hub unreachable, lists the step revisions already in the local cache instead (a warning is
    logged); with none there either, raises ``ValueError``. A repo without step branches gives
    an empty list.
    """
    if not isinstance(name, str) or not name.strip() or name.startswith(("/", ".", "~")):
        raise ValueError(f"give a hub repo name such as 'EleutherAI/pythia-70m', got {name!r}")
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_unreachable()
    if why is None:
        from huggingface_hub import HfApi

        try:  # a fresh HfApi reads the endpoint now (HF_ENDPOINT), not when huggingface_hub was imported
            refs = HfApi().list_repo_refs(name)
        except Exception as e:  # unknown repo, no access, network: the hub raises many types
            raise ValueError(f"could not list the revisions of {name!r} on the Hugging Face hub "
                             f"({type(e).__name__}: {e}); check the name and the network") from e
        revs = [HubRevision(b.name, int(m.group(1)), b.target_commit)
                for b in refs.branches if (m := _STEP.fullmatch(b.name))]
    else:
        revs = _cached_refs(name)
        if not revs:
            raise ValueError(f"could not list the revisions of {name!r}: {why}, and the local cache holds none "
                             f"of its step revisions")
        log.warning("listing %s's revisions from the local cache only (%s)", name, why)
    return sorted(revs, key=lambda r: r.step)


def load_revision(name: str, revision: str | HubRevision) -> tuple[GPT, BPETokenizer | None]:
    """The model and tokenizer of hub repo ``name`` at ``revision`` (e.g. ``"step1000"``).

    Cached by ``huggingface_hub``: a revision loaded once loads again with no network.
    """
    rev = revision.name if isinstance(revision, HubRevision) else revision
    return load_pretrained(name, revision=rev)


@dataclass
class RevisionScores:
    """Head scores of one revision: ``scores[kind]`` is ``[L, H]`` (see ``probe_head_scores``)."""

    revision: str
    step: int | None
    scores: dict[str, torch.Tensor]


def head_scores_over_revisions(
    name: str, revisions: Iterable[str | HubRevision] | None = None, *, seq_len: int | None = None,
    seed: int = 0, batch: int = 4, token_ids: Sequence[int] | None = None,
) -> Iterator[RevisionScores]:
    """Score every head of ``name`` at each revision, one :class:`RevisionScores` per revision.

    ``revisions`` defaults to every step revision (:func:`list_step_revisions`): 154 downloads
    for Pythia, so pass a few. Each is loaded with :func:`load_revision` and scored with
    :func:`lm_core.analysis.probe_head_scores` on the same fixed probe (``seq_len``, ``seed``,
    ``batch``, ``token_ids`` as there), so the scores of different steps are comparable. A
    generator: a caller can show progress and stop early; only one model is held at a time.
    """
    if revisions is None:
        revisions = list_step_revisions(name)
    for rev in revisions:
        rev_name = rev.name if isinstance(rev, HubRevision) else str(rev)
        m = _STEP.fullmatch(rev_name)
        model, _ = load_revision(name, rev_name)
        scores = analysis.probe_head_scores(model, seq_len=seq_len, seed=seed, batch=batch, token_ids=token_ids)
        yield RevisionScores(rev_name, int(m.group(1)) if m else None, scores)
        del model


def revision_scores_frame(results: Iterable[RevisionScores]) -> pd.DataFrame:
    """Long table for plotting curves: one row per (revision, layer, head) with every score kind."""
    frames = []
    for r in results:
        df = analysis.head_scores_table(r.scores)
        df.insert(0, "step", r.step)
        df.insert(0, "revision", r.revision)
        frames.append(df)
    if not frames:
        raise ValueError("no revisions scored: pass the results of head_scores_over_revisions")
    return pd.concat(frames, ignore_index=True)
