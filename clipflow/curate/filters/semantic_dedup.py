"""Semantic deduplication: drop a row whose embedding is within a cosine threshold of a row kept before it."""

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter
from clipflow.curate.near_duplicates import near_duplicates


class SemanticDedup(Filter):
    kind = "semantic_dedup"
    description = "drop rows within threshold cosine similarity of an earlier kept row"
    options_schema = {
        "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.95},
        "modality": {"enum": ["image", "text"], "default": "image"},
    }

    def embeddings(self) -> str | None:
        return self.options["modality"]

    def decide(self, pool, embeddings) -> Decision:
        duplicate_of = near_duplicates(embeddings, self.options["threshold"])
        keep = duplicate_of < 0
        kept_key = pool["key"].to_numpy()[np.maximum(duplicate_of, 0)]
        return Decision(keep, pd.Series(np.where(keep, None, kept_key), dtype=object))
