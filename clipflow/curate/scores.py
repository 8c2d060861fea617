"""Score heads over the pool's image embeddings (clipflow.embed.heads), and the per-rating aesthetic embeddings
that clip-retrieval's back end adds to a query for `aesthetic_score`.

Both stream the pool shard by shard: one job holds one shard's embeddings and the heads' weights, at any pool
size; the rating embeddings are ten running sums.
"""

import numpy as np

from clipflow.embed.heads import AESTHETIC, RATINGS, SAFETY, load_head, unsafe_probability

SCORE_COLUMNS = {"aesthetic_model": "aesthetic_score", "safety_model": "punsafe"}  # curate.scores key -> column


def load_heads(models: dict) -> dict:
    """The configured heads ({"aesthetic_model": path, "safety_model": path}, unset ones None) by pool column."""
    return {
        SCORE_COLUMNS[key]: load_head(path, AESTHETIC if key == "aesthetic_model" else SAFETY)
        for key, path in models.items()
        if path
    }


def head_scores(heads: dict, image_path) -> dict[str, np.ndarray]:
    """One shard's score columns from `heads` (load_heads), over its image embeddings."""
    embeddings = np.load(image_path, mmap_mode="r")
    return {
        column: (unsafe_probability(head, embeddings) if column == "punsafe" else head(embeddings)).astype(np.float32)
        for column, head in heads.items()
    }


def rating_embeddings(batches) -> np.ndarray:
    """One embedding per rating 0..9: the mean (renormalized) image embedding of the pool's images whose
    aesthetic score rounds to it, as LAION's rating{k}.npy are means over images rated k. A rating no image
    has takes the nearest rating's embedding. `batches`: (aesthetic scores, image embeddings) of the same rows,
    a row group of the pool at a time."""
    sums, counts = None, np.zeros(len(RATINGS), np.int64)
    for scores, embeddings in batches:
        ratings = np.clip(np.rint(scores), RATINGS.start, RATINGS.stop - 1).astype(np.int64)
        if sums is None:
            sums = np.zeros((len(RATINGS), embeddings.shape[1]), np.float64)
        np.add.at(sums, ratings, embeddings.astype(np.float32))
        counts += np.bincount(ratings, minlength=len(RATINGS))
    if sums is None or not counts.any():
        raise ValueError("no embedded images to compute the aesthetic embeddings from")
    rated = np.flatnonzero(counts)
    nearest = rated[np.abs(np.arange(len(RATINGS))[:, None] - rated[None, :]).argmin(axis=1)]
    means = sums[nearest] / counts[nearest, None]
    return (means / np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
