"""The corpus chosen on the Train page (the text and where it came from)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Corpus:
    """A corpus chosen on the Train page: the text and where it came from."""

    name: str      # shown to the user, e.g. "builtin:python-docs" or "upload: notes.txt"
    spec: str      # what the run folder records as its corpus
    text: str
