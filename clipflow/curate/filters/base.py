"""The contract every curation filter kind meets: adding a kind is adding one module beside this one.

A filter decides on the whole pool at once and returns a keep mask aligned with it, so filters compose in
any order and each one's effect can be reported alone and combined. It declares its options (a JSON schema
fragment, merged into the config schema) and which embeddings it reads besides the pool; the rule layer
asks it, and never names kinds.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Decision:
    keep: np.ndarray  # one bool per pool row
    detail: pd.Series | None = None  # per row: the reason for a removal, or what a kept row matched
    info: dict = field(default_factory=dict)  # what the filter resolved (e.g. a threshold), for the record


def first_failures(checks: dict, rows: int) -> pd.Series:
    """Per row, the name of the first of `checks` (name -> bool array, True where the row fails it) that it
    fails, in their order; None where it fails none."""
    reason = pd.Series([None] * rows, dtype=object)
    for name, failed in reversed(checks.items()):
        reason[np.asarray(failed)] = name
    return reason


class Filter:
    kind: str = ""
    description: str = ""
    options_schema: dict = {}  # JSON schema of the options besides `kind`, with their defaults
    required: tuple[str, ...] = ()
    score_model: str | None = None  # the curate.scores head whose pool column the filter reads, if any
    # A filter whose work no one job can hold at scale runs it first as jobs of its own (rules/near_duplicates.smk
    # for semantic_dedup, the one such kind); decide() then gets their per-row result in place of the embeddings.
    runs_as_jobs: bool = False

    def __init__(self, options: dict):
        self.options = options

    def metadata_columns(self) -> tuple[str, ...]:
        """Pool columns the filter reads that come from the metadata (input.keep_cols or metadata_cols) or, for
        the original image size, from the download; checked against the config before any work."""
        return ()

    def assets(self) -> list[str]:
        """Local files the filter reads (a vocabulary, a language model, centroids): inputs of its job, so
        that a changed file reruns it."""
        return []

    def embeddings(self) -> str | None:
        """Which embeddings ("image" or "text") the filter reads besides the pool, or None."""
        return None

    def decide(self, pool: pd.DataFrame, embeddings: list[np.ndarray]) -> Decision:
        """`pool` has a row per embedded sample (key, uid, caption, clip_score, original size, ...);
        `embeddings` are the arrays of the modality `embeddings()` named, in pool order."""
        raise NotImplementedError
