"""Semantic deduplication: drop a row whose embedding is within a cosine threshold of a row kept before it.

The work runs as jobs of its own (clipflow.curate.near_duplicate_jobs); this filter reads their result."""

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter
from clipflow.errors import ClipflowError


class SemanticDedup(Filter):
    kind = "semantic_dedup"
    description = "drop rows within threshold cosine similarity of an earlier kept row"
    options_schema = {
        "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.95},
        "modality": {"enum": ["image", "text"], "default": "image"},
        "rows_per_cluster": {"type": "integer", "minimum": 1, "default": 1000},
        "max_clusters": {"type": "integer", "minimum": 1, "default": 50_000},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
    }
    runs_as_jobs = True

    def embeddings(self) -> str | None:
        return self.options["modality"]

    def decide(self, pool, embeddings) -> Decision:
        """`embeddings` holds one array: each pool row's duplicate_of, from the near-duplicate jobs."""
        (duplicate_of,) = embeddings
        if len(duplicate_of) != len(pool):
            raise ClipflowError(
                f"the near-duplicate jobs decided on {len(duplicate_of)} rows, the pool has {len(pool)}"
            )
        keep = np.asarray(duplicate_of) < 0
        kept_key = pool["key"].to_numpy()[np.maximum(duplicate_of, 0)]
        return Decision(keep, pd.Series(np.where(keep, None, kept_key), dtype=object))
