"""Near-duplicate removal as jobs (rules/near_duplicates.smk), making the decisions `near_duplicates` makes in
one process, from the same steps, with no job holding the pool:

1. centroids: k-means on the training sample, read row by row from the per-shard embeddings;
2. assign, per embedding chunk: each row's clusters; the chunk's vectors are written again sorted by cluster
   (a shuffle: every row twice), so that a cluster's members can be read as one slice of each chunk's file;
3. pairs, per group of clusters: one cluster at a time, the similar pairs, written sorted by row with the
   bounds of each range of RANGE_ROWS rows;
4. decide: the greedy pass over the pairs, range by range, with a bit per row; writes each row's duplicate_of.

Memory of one job, for P pool rows and d dimensions, with at most max_clusters (K) clusters: centroids 64 K
sampled rows (4 d bytes each); assign, ~80 bytes a row of its chunk (cluster entries and their order) and a shard;
pairs, the largest cluster of its group (its vectors as float32) and its group's pairs; decide, P/8 bytes and
one range's pairs.
"""

import json
from pathlib import Path

import numpy as np

from clipflow import files
from clipflow.bulk import Cache
from clipflow.curate.near_duplicates import (
    GreedyPass,
    assign,
    cluster_count,
    similar_pairs,
    train_centroids,
    training_sample,
)
from clipflow.embed import embedding_files
from clipflow.index.vectors import StoredVectors

RANGE_ROWS = 2**22  # rows the greedy pass takes at once


def write_centroids(folder: Path | str, shards: list[str], options: dict, centroids: Path, layout: Path,
                    cache: Cache | None = None) -> None:  # fmt: skip
    """The k-means centroids of the pool's `options["modality"]` embeddings (those on bulk storage read through
    `cache`), and the pool's layout: its rows, its clusters and where each shard starts."""
    stored = StoredVectors.of(embedding_files(folder, shards, options["modality"]), cache)
    rows = len(stored)
    clusters = cluster_count(rows, options["rows_per_cluster"], options["max_clusters"])
    sample = stored.take(training_sample(rows, clusters, options["seed"]))
    np.save(centroids, train_centroids(sample, clusters, options["seed"]))
    starts = stored.starts[:-1].tolist()
    files.write_json(layout, {"rows": rows, "clusters": clusters, "shards": shards, "starts": starts})


def read_layout(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def write_assignment(folder: Path | str, shards: list[str], modality: str, layout: dict, centroids: np.ndarray,
                     out: dict, cache: Cache | None = None) -> None:  # fmt: skip
    """One chunk's rows by cluster: `out["vectors"]` (each row once per cluster it joins), `out["rows"]`
    (their pool rows) and `out["bounds"]` (where each cluster starts, clusters + 1 values). Its embeddings on bulk
    storage are read through `cache`."""
    start_of = dict(zip(layout["shards"], layout["starts"]))
    paths = embedding_files(folder, shards, modality)
    local = cache.local if cache else Path  # at each read: a copy may go to make room for the next
    assignments = [assign(np.load(local(path)), centroids) for path in paths]
    per_row = assignments[0].shape[1]  # a chunk has at least one shard
    clusters = np.concatenate([a.ravel() for a in assignments])
    rows = np.concatenate([np.repeat(np.arange(len(a)) + start_of[s], per_row) for a, s in zip(assignments, shards)])
    order = np.argsort(clusters, kind="stable")  # by cluster, pool order within each
    destination = np.empty_like(order)
    destination[order] = np.arange(len(order))
    first = np.load(local(paths[0]), mmap_mode="r")
    vectors = np.lib.format.open_memmap(out["vectors"], "w+", first.dtype, (len(order), first.shape[1]))
    entry = 0
    for path, assignment in zip(paths, assignments):  # each shard read again: the chunk is never held whole
        entries = assignment.size
        if entries:
            vectors[destination[entry : entry + entries]] = np.repeat(np.load(local(path)), per_row, axis=0)
        entry += entries
    vectors.flush()
    del vectors
    np.save(out["rows"], rows[order])
    np.save(out["bounds"], np.searchsorted(clusters[order], np.arange(layout["clusters"] + 1)))


def write_pairs(assignments: list[Path], layout: dict, group: int, groups: int, threshold: float, out: dict) -> None:
    """The similar pairs within clusters [group K / groups, (group + 1) K / groups), from every chunk's
    assignment folder: `out["pairs"]` (row, earlier row), unique and sorted, and `out["bounds"]` (where each
    range of RANGE_ROWS rows starts)."""
    first = group * layout["clusters"] // groups
    last = (group + 1) * layout["clusters"] // groups
    chunks = [
        (
            np.array(np.load(folder / "bounds.npy", mmap_mode="r")[first : last + 1]),
            np.load(folder / "rows.npy", mmap_mode="r"),
            np.load(folder / "vectors.npy", mmap_mode="r"),
        )
        for folder in map(Path, assignments)
    ]
    found = [np.empty((0, 2), np.int64)]
    for cluster in range(last - first):
        slices = [(rows, vectors, slice(*bounds[cluster : cluster + 2])) for bounds, rows, vectors in chunks]
        members = np.concatenate([rows[part] for rows, _, part in slices])
        if len(members) > 1:
            found.append(
                similar_pairs(np.concatenate([vectors[part] for _, vectors, part in slices]), members, threshold)
            )
    pairs = np.unique(np.concatenate(found), axis=0)
    np.save(out["pairs"], pairs)
    np.save(out["bounds"], np.searchsorted(pairs[:, 0], _range_starts(layout["rows"])))


def _range_starts(rows: int) -> np.ndarray:
    return np.r_[np.arange(0, rows, RANGE_ROWS), rows]


def write_decisions(pair_files: list[dict], layout: dict, out: Path) -> int:
    """Each pool row's duplicate_of (the kept row it duplicates, or -1), from every group's pairs; returns the
    number of rows dropped."""
    rows = layout["rows"]
    if rows == 0:
        np.save(out, np.empty(0, np.int64))
        return 0
    groups = [(np.load(f["pairs"], mmap_mode="r"), np.load(f["bounds"])) for f in pair_files]
    duplicate_of = np.lib.format.open_memmap(out, "w+", np.int64, (rows,))
    greedy = GreedyPass(rows)
    starts = _range_starts(rows)
    dropped_rows = 0
    for number, (start, end) in enumerate(zip(starts[:-1], starts[1:])):
        pieces = [np.empty((0, 2), np.int64)] + [pairs[bounds[number] : bounds[number + 1]] for pairs, bounds in groups]
        dropped, kept = greedy.apply(np.unique(np.concatenate(pieces), axis=0))
        duplicate_of[start:end] = -1
        duplicate_of[dropped] = kept
        dropped_rows += len(dropped)
    duplicate_of.flush()
    return dropped_rows
