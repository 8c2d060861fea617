"""The contract every curation filter kind meets: adding a kind is adding one module beside this one.

A filter decides row group by row group of the pool (clipflow.curate.pool.POOL_ROWS rows), so that its job holds
one group at any pool size; what it must know of the whole pool first (a top fraction's threshold) it resolves in
passes over the pool that hold no more. It returns a keep mask aligned with the rows, so filters compose in any
order and each one's effect can be reported alone and combined. It declares its options (a JSON schema
fragment, merged into the config schema) and which embeddings it reads besides the pool; the rule layer
asks it, and never names kinds.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Decision:
    keep: np.ndarray  # one bool per row
    detail: pd.Series | None = None  # per row: the reason for a removal, or what a kept row matched
    counts: dict = field(default_factory=dict)  # name -> {value: rows}, summed over the row groups for the record


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

    def resolve(self, pool) -> dict:
        """What the filter must know of the whole pool (the parquet file `pool`) before it decides row by row, e.g.
        the threshold of a top fraction; it goes to decide() and to the record. Most filters need nothing."""
        return {}

    def decide(self, rows: pd.DataFrame, embeddings: np.ndarray | None, resolved: dict) -> Decision:
        """`rows`: a row group of the pool, a row per embedded sample (key, uid, caption, clip_score, original size,
        ...); `embeddings`: those rows of the modality `embeddings()` names (or of the filter's jobs' result)."""
        raise NotImplementedError
