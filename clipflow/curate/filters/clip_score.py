"""CLIP score: keep rows whose image-text cosine similarity is >= a threshold, or the pool's top fraction."""

import math

import numpy as np

from clipflow.curate.filters.base import Decision, Filter
from clipflow.errors import ClipflowError


def clip_score_filter(scores: np.ndarray, threshold: float | None, top_fraction: float | None) -> tuple:
    """Keep rows whose image-text cosine similarity is >= threshold, or the top fraction of the pool
    (ties at the cut are kept). Returns the mask and the threshold used."""
    if (threshold is None) == (top_fraction is None):
        raise ClipflowError("a clip_score filter needs exactly one of threshold and top_fraction")
    if top_fraction is not None:
        if len(scores) == 0:
            return np.zeros(0, bool), None
        keep_count = max(1, math.ceil(top_fraction * len(scores)))
        threshold = float(np.sort(scores)[::-1][keep_count - 1])
    return scores >= threshold, threshold


class ClipScore(Filter):
    kind = "clip_score"
    description = (
        "image-text cosine similarity of our embeddings: keep rows >= threshold (LAION: 0.28 with ViT-B-32) or "
        "the top_fraction of the pool (DataComp: 0.3); exactly one of the two"
    )
    options_schema = {
        "threshold": {"type": ["number", "null"], "minimum": -1, "maximum": 1, "default": None},
        "top_fraction": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1, "default": None},
    }

    def decide(self, pool, embeddings) -> Decision:
        keep, threshold = clip_score_filter(
            pool["clip_score"].to_numpy(), self.options["threshold"], self.options["top_fraction"]
        )
        return Decision(keep, info={"threshold": threshold})
