"""CLIP score: keep rows whose image-text cosine similarity (or any numeric score column of the pool) is >= a
threshold, or the pool's top fraction as DataComp's baselines select it."""

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter
from clipflow.curate.scores import SCORE_COLUMNS
from clipflow.errors import ClipflowError


def clip_score_filter(scores: np.ndarray, threshold: float | None, top_fraction: float | None) -> tuple:
    """Keep rows whose score is >= threshold, or the top fraction of the pool. Returns the mask and the
    threshold used.

    A fraction f of n rows keeps the rows at or above the (int(n * f) + 1)-th highest score, which is DataComp's
    rule (baselines/apply_filter.py get_threshold): 143 of 284 rows at 0.5, 7 of 20 at 0.3, ties at the cut
    kept, every row at 1.0."""
    if (threshold is None) == (top_fraction is None):
        raise ClipflowError("a clip_score filter needs exactly one of threshold and top_fraction")
    if top_fraction is not None:
        if len(scores) == 0:
            return np.zeros(0, bool), None
        cut = min(int(len(scores) * top_fraction), len(scores) - 1)
        threshold = float(np.sort(scores)[::-1][cut])
    return scores >= threshold, threshold


def score_values(pool: pd.DataFrame, column: str) -> np.ndarray:
    """The pool's `column` as numbers; a missing or non-numeric column is an error naming it."""
    if column not in pool.columns:
        raise ClipflowError(
            f"clip_score filter: the pool has no column {column!r} (it has {sorted(pool.columns)}): "
            "metadata columns reach the pool through input.keep_cols"
        )
    values = pool[column]
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise ClipflowError(f"clip_score filter: column {column!r} holds {values.dtype}, not numbers")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ClipflowError(
            f"clip_score filter: column {column!r} has no value in pool row {row} (uid {pool['uid'].iat[row]})"
        )
    return values.to_numpy(dtype=np.float64)


class ClipScore(Filter):
    kind = "clip_score"
    description = (
        "image-text cosine similarity of our embeddings: keep rows >= threshold (LAION: 0.28 with ViT-B-32) or "
        "the top_fraction of the pool (DataComp: 0.3); exactly one of the two"
    )
    options_schema = {
        "threshold": {"type": ["number", "null"], "default": None},
        "top_fraction": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1, "default": None},
        "score_column": {
            "description": (
                "the pool column to rank by: clip_score (our embeddings), or any numeric metadata column kept with "
                "input.keep_cols, e.g. DataComp's clip_l14_similarity_score or LAION's similarity"
            ),
            "type": "string",
            "minLength": 1,
            "default": "clip_score",
        },
    }

    def metadata_columns(self) -> tuple[str, ...]:
        column = self.options["score_column"]
        return () if column in ("clip_score", *SCORE_COLUMNS.values()) else (column,)

    def decide(self, pool, embeddings) -> Decision:
        scores = score_values(pool, self.options["score_column"])
        keep, threshold = clip_score_filter(scores, self.options["threshold"], self.options["top_fraction"])
        return Decision(keep, info={"threshold": threshold})
