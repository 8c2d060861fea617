"""Near-duplicate removal by embedding: in pool order, a row is dropped when its embedding is within
`threshold` cosine similarity of a row kept before it, so the first of each group survives.

As in SemDeDup, rows are clustered with k-means (~`rows_per_cluster` each) and compared only within
clusters, a few matrix products each, so millions of rows take minutes on a laptop. Each row joins its two
nearest clusters, so a pair near a cluster boundary is still compared; the pairs found then go through the
greedy pass in pool order. bench/semantic_dedup.py measures speed and how many planted copies are found.
"""

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)
BLOCK_ELEMENTS = 2**25  # similarity values computed at once (128 MB of float32)


def _normalized(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _clusters(vectors: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Each row's two nearest k-means clusters (spherical k-means trained on up to 64 rows per cluster)."""
    if clusters == 1:
        return np.zeros((len(vectors), 1), np.int64)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(vectors), min(len(vectors), 64 * clusters), replace=False))
    kmeans = faiss.Kmeans(vectors.shape[1], clusters, niter=20, seed=seed, spherical=True)
    kmeans.train(_normalized(vectors[sample]))
    assignment = np.empty((len(vectors), 2), np.int64)
    for start in range(0, len(vectors), 65536):
        _, assignment[start : start + 65536] = kmeans.index.search(_normalized(vectors[start : start + 65536]), 2)
    return assignment


def _similar_pairs(vectors: np.ndarray, members: np.ndarray, threshold: float) -> np.ndarray:
    """(row, earlier row) pairs within `threshold` among `members` (ascending row numbers)."""
    cluster = _normalized(vectors[members])
    block = max(1, BLOCK_ELEMENTS // len(members))
    pairs = []
    for start in range(0, len(members), block):
        rows, columns = np.nonzero(cluster[start : start + block] @ cluster[: start + block].T >= threshold)
        earlier = columns < rows + start
        pairs.append(np.stack([members[rows[earlier] + start], members[columns[earlier]]], axis=1))
    return np.concatenate(pairs)


def _greedy(pairs: np.ndarray, rows: int) -> np.ndarray:
    """In pool order, each row with a kept earlier partner is dropped: the kept row it duplicates, or -1."""
    duplicate_of = np.full(rows, -1, np.int64)
    if len(pairs) == 0:
        return duplicate_of
    pairs = np.unique(pairs, axis=0)  # sorted by row, then partner
    bounds = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    for row, partners in zip(pairs[np.r_[0, bounds], 0], np.split(pairs[:, 1], bounds)):
        kept = partners[duplicate_of[partners] < 0]
        if len(kept):
            duplicate_of[row] = kept[0]
    return duplicate_of


def near_duplicates(parts: list, threshold: float, rows_per_cluster: int = 1000, seed: int = 0) -> np.ndarray:
    """For each row of the arrays in `parts` (e.g. embedding chunks, in pool order): the row number of
    the kept row it duplicates, or -1 for rows that are kept."""
    vectors = np.concatenate([np.asarray(part) for part in parts]) if parts else np.empty((0, 1))
    if len(vectors) == 0:
        return np.full(0, -1, np.int64)
    assignment = _clusters(vectors, max(1, len(vectors) // rows_per_cluster), seed)
    row_of = np.repeat(np.arange(len(vectors)), assignment.shape[1])
    order = np.argsort(assignment.ravel(), kind="stable")  # by cluster, pool order within each
    sizes = np.bincount(assignment.ravel())
    pairs = [
        _similar_pairs(vectors, row_of[members], threshold)
        for members in np.split(order, np.cumsum(sizes)[:-1])
        if len(members) > 1
    ]
    duplicate_of = _greedy(np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64), len(vectors))
    log.info(
        "near-duplicates: %d of %d rows removed (%d clusters, largest %d)",
        (duplicate_of >= 0).sum(),
        len(vectors),
        len(sizes),
        sizes.max(),
    )
    return duplicate_of
