"""Semantic deduplication: drop a row whose embedding is within a cosine threshold of a row kept before it.

The work runs as jobs of its own (clipflow.curate.near_duplicate_jobs); this filter reads their result."""

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter


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

    def decide(self, rows, embeddings, resolved) -> Decision:
        """`embeddings`: the rows' duplicate_of, from the near-duplicate jobs. A removed row's detail is the pool row
        (the index id) of the copy kept."""
        keep = np.asarray(embeddings) < 0
        return Decision(keep, pd.Series(np.where(keep, None, embeddings.astype(str)), dtype=object))
