"""Near-duplicate removal by embedding: in pool order, a row is dropped when its embedding is within
`threshold` cosine similarity of a row kept before it, so the first of each group survives.

As in SemDeDup, rows are clustered with k-means (~`rows_per_cluster` each, at most `max_clusters`) and compared
only within clusters, a few matrix products each. Each row joins its two nearest clusters, so a pair near a
cluster boundary is still compared; the pairs found then go through the greedy pass in pool order.

The steps below are shared by the two ways of running it, which therefore decide alike: `near_duplicates`, one
process holding every vector (small pools, tests, bench/semantic_dedup.py), and the workflow's jobs
(clipflow.curate.near_duplicate_jobs), none of which holds more than a chunk, a cluster or a range of rows.
"""

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)
BLOCK_ELEMENTS = 2**25  # similarity values computed at once (128 MB of float32)
SAMPLE_PER_CLUSTER = 64  # k-means training rows per cluster
ASSIGN_BLOCK = 65536  # rows searched against the centroids at once, within one shard


def _normalized(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def cluster_count(rows: int, rows_per_cluster: int, max_clusters: int) -> int:
    return max(1, min(max_clusters, rows // rows_per_cluster))


def training_sample(rows: int, clusters: int, seed: int) -> np.ndarray:
    """The row numbers k-means trains on, ascending (none for a single cluster)."""
    if clusters == 1:
        return np.empty(0, np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, min(rows, SAMPLE_PER_CLUSTER * clusters), replace=False))


def train_centroids(sample: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (clusters x dim, float32); one cluster needs no training."""
    if clusters == 1:
        return np.zeros((1, 0), np.float32)
    kmeans = faiss.Kmeans(sample.shape[1], clusters, niter=20, seed=seed, spherical=True)
    kmeans.train(_normalized(sample))
    return kmeans.centroids


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's two nearest clusters (rows x 2), or the one cluster (rows x 1)."""
    if len(centroids) == 1:
        return np.zeros((len(vectors), 1), np.int64)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    assignment = np.empty((len(vectors), 2), np.int64)
    for start in range(0, len(vectors), ASSIGN_BLOCK):
        block = _normalized(vectors[start : start + ASSIGN_BLOCK])
        _, assignment[start : start + ASSIGN_BLOCK] = index.search(block, 2)
    return assignment


def similar_pairs(vectors: np.ndarray, members: np.ndarray, threshold: float) -> np.ndarray:
    """(row, earlier row) pairs within `threshold` among one cluster's `members` (ascending row numbers) whose
    embeddings are `vectors`, in the same order."""
    cluster = _normalized(vectors)
    block = max(1, BLOCK_ELEMENTS // len(members))
    pairs = [np.empty((0, 2), np.int64)]
    for start in range(0, len(members), block):
        rows, columns = np.nonzero(cluster[start : start + block] @ cluster[: start + block].T >= threshold)
        earlier = columns < rows + start
        pairs.append(np.stack([members[rows[earlier] + start], members[columns[earlier]]], axis=1))
    return np.concatenate(pairs)


class GreedyPass:
    """The greedy rule over `rows` rows, fed pairs in ascending row order: a row with a kept earlier partner is
    dropped, as a duplicate of the first such partner. Holds one bit per row."""

    def __init__(self, rows: int):
        self.dropped = np.zeros((rows + 7) // 8, np.uint8)

    def _is_dropped(self, rows: np.ndarray) -> np.ndarray:
        return (self.dropped[rows >> 3] >> (rows & 7).astype(np.uint8)) & 1 == 1

    def apply(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`pairs` (row, partner), unique and sorted, every row above those of earlier calls: the rows dropped
        and the kept row each duplicates."""
        if len(pairs) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        bounds = np.flatnonzero(np.diff(pairs[:, 0])) + 1
        dropped, kept_of = [], []
        for row, partners in zip(pairs[np.r_[0, bounds], 0], np.split(pairs[:, 1], bounds)):
            kept = partners[~self._is_dropped(partners)]
            if len(kept):
                self.dropped[row >> 3] |= np.uint8(1 << (row & 7))
                dropped.append(row)
                kept_of.append(kept[0])
        return np.array(dropped, np.int64), np.array(kept_of, np.int64)


def near_duplicates(
    parts: list, threshold: float, rows_per_cluster: int = 1000, max_clusters: int = 50_000, seed: int = 0
) -> np.ndarray:
    """For each row of the arrays in `parts` (per-shard embeddings, in pool order), in one process: the row
    number of the kept row it duplicates, or -1 for rows that are kept."""
    sizes = [len(part) for part in parts]
    rows = sum(sizes)
    if rows == 0:
        return np.full(0, -1, np.int64)
    vectors = np.concatenate([np.asarray(part) for part in parts])
    clusters = cluster_count(rows, rows_per_cluster, max_clusters)
    centroids = train_centroids(vectors[training_sample(rows, clusters, seed)], clusters, seed)
    assignment = np.concatenate([assign(part, centroids) for part in parts])
    row_of = np.repeat(np.arange(rows), assignment.shape[1])
    order = np.argsort(assignment.ravel(), kind="stable")  # by cluster, pool order within each
    cluster_sizes = np.bincount(assignment.ravel(), minlength=clusters)
    pairs = [
        similar_pairs(vectors[row_of[members]], row_of[members], threshold)
        for members in np.split(order, np.cumsum(cluster_sizes)[:-1])
        if len(members) > 1
    ]
    pairs = np.unique(np.concatenate(pairs), axis=0) if pairs else np.empty((0, 2), np.int64)
    duplicate_of = np.full(rows, -1, np.int64)
    dropped, kept = GreedyPass(rows).apply(pairs)
    duplicate_of[dropped] = kept
    log.info(
        "near-duplicates: %d of %d rows removed (%d clusters, largest %d)",
        len(dropped),
        rows,
        clusters,
        cluster_sizes.max(),
    )
    return duplicate_of
