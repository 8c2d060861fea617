"""CLIP score: keep rows whose image-text cosine similarity (or any numeric score column of the pool) is >= a
threshold, or the pool's top fraction as DataComp's baselines select it."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clipflow.curate.filters.base import Decision, Filter
from clipflow.curate.pool import pool_batches
from clipflow.curate.scores import SCORE_COLUMNS
from clipflow.errors import ClipflowError


def top_fraction_threshold(batches, fraction: float) -> float | None:
    """The score that keeps the top `fraction` of the scores that `batches()` gives batch by batch: the rows at or
    above the (int(n * fraction) + 1)-th highest of n, DataComp's rule (baselines/apply_filter.py get_threshold):
    143 of 284 rows at 0.5, 7 of 20 at 0.3, ties at the cut kept, every row at 1.0. None when there are no rows.

    Exact, without holding the scores: a radix selection over their float64 bits, 16 bits a pass (four passes
    over the batches), counting 65,536 values at a time."""
    prefix, rank = np.uint64(0), None
    for shift in (48, 32, 16, 0):
        counts = np.zeros(1 << 16, np.int64)
        for scores in batches():
            keys = _ordered_bits(scores)
            if shift < 48:
                keys = keys[keys >> np.uint64(shift + 16) == prefix]
            counts += np.bincount((keys >> np.uint64(shift) & np.uint64(0xFFFF)).astype(np.int64), minlength=1 << 16)
        if rank is None:  # the first pass counts every score: no pass of its own for the row count
            rows = int(counts.sum())
            if rows == 0:
                return None
            rank = rows - 1 - min(int(rows * fraction), rows - 1)  # the threshold's place in ascending order
        below = np.cumsum(counts)
        digit = int(np.searchsorted(below, rank, side="right"))
        rank -= int(below[digit - 1]) if digit else 0
        prefix = prefix << np.uint64(16) | np.uint64(digit)
    return float(_from_ordered_bits(prefix))


def _ordered_bits(scores: np.ndarray) -> np.ndarray:
    """float64 scores as uint64 keys in the same order (-0.0 as 0.0)."""
    bits = (np.asarray(scores, np.float64) + 0.0).view(np.uint64)
    negative = bits >> np.uint64(63) == 1
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def _from_ordered_bits(key: np.uint64) -> np.float64:
    bits = key & np.uint64((1 << 63) - 1) if key >> np.uint64(63) else ~key
    return np.array([bits], np.uint64).view(np.float64)[0]


def score_values(rows: pd.DataFrame, column: str) -> np.ndarray:
    """The `column` of pool rows (indexed by their row numbers) as numbers, floats in their own precision; a
    non-numeric column, or a row without a value, is an error naming it (and the row's uid, where `rows` holds
    them)."""
    values = rows[column]
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise ClipflowError(f"clip_score filter: column {column!r} holds {values.dtype}, not numbers")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        uid = f" (uid {rows['uid'].iat[row]})" if "uid" in rows else ""
        raise ClipflowError(f"clip_score filter: column {column!r} has no value in pool row {rows.index[row]}{uid}")
    return values.to_numpy(dtype=values.dtype if pd.api.types.is_float_dtype(values) else np.float64)


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

    def resolve(self, pool) -> dict:
        threshold, fraction, column = (self.options[key] for key in ("threshold", "top_fraction", "score_column"))
        if (threshold is None) == (fraction is None):
            raise ClipflowError("a clip_score filter needs exactly one of threshold and top_fraction")
        columns = pq.read_schema(pool).names
        if column not in columns:
            raise ClipflowError(
                f"clip_score filter: the pool has no column {column!r} (it has {sorted(columns)}): "
                "metadata columns reach the pool through input.keep_cols"
            )
        if fraction is not None:

            def batches():
                return (score_values(rows, column) for rows in pool_batches(pool, [column]))

            threshold = top_fraction_threshold(batches, fraction)
        return {"threshold": threshold}

    def decide(self, rows, embeddings, resolved) -> Decision:
        scores = score_values(rows, self.options["score_column"])
        threshold = resolved["threshold"]
        if threshold is None:
            return Decision(np.zeros(len(rows), bool))
        # In the scores' precision, as DataComp's `df[key] >= threshold` compares: float32 scores meet a configured
        # 0.28 as float32(0.28), which is above 0.28 (a top fraction's threshold is one of the scores: exact).
        return Decision(scores >= scores.dtype.type(threshold))
