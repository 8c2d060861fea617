"""Near-duplicate removal by embedding: in pool order, a row is dropped when its embedding is within
`threshold` cosine similarity of a row kept before it, so the first of each group survives.

Kept rows go into an inverted-file index (k-means cells, as SemDeDup clusters first); each new batch of
rows is searched against it, probing the nearest cells only, then checked against the batch's own earlier
rows. Memory holds the kept vectors plus one batch, so millions of rows fit on one machine.
"""

import logging
import math

import faiss
import numpy as np

log = logging.getLogger(__name__)


def _cell_count(rows: int) -> int:
    # ~sqrt(rows) cells: a query scans ~nprobe/sqrt(rows) of the kept rows, and training stays cheap.
    return 1 if rows < 10_000 else int(math.sqrt(rows))


def _normalized(batch: np.ndarray) -> np.ndarray:
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    return batch / np.maximum(np.linalg.norm(batch, axis=1, keepdims=True), 1e-12)


def _kept_index(parts: list, rows: int, cells: int, seed: int) -> faiss.Index:
    """An empty inverted-file index whose cells are trained on a uniform sample of all rows."""
    dim = parts[0].shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(seed).choice(rows, min(rows, 64 * cells), replace=False))
    offsets = np.cumsum([0] + [len(part) for part in parts])
    pieces = [part[sample[(sample >= lo) & (sample < hi)] - lo] for part, lo, hi in zip(parts, offsets, offsets[1:])]
    index.train(_normalized(np.concatenate(pieces)))
    return index


def _batches(parts: list, batch_size: int):
    """(first row, rows) over the parts in order, never crossing a part's end."""
    start = 0
    for part in parts:
        for offset in range(0, len(part), batch_size):
            yield start + offset, part[offset : offset + batch_size]
        start += len(part)


def near_duplicates(parts: list, threshold: float, batch_size: int = 8192, nprobe: int = 8, seed: int = 0):
    """For each row of the arrays in `parts` (e.g. memory-mapped embedding chunks, in pool order): the
    row number of the kept row it duplicates, or -1 for rows that are kept."""
    rows = sum(len(part) for part in parts)
    duplicate_of = np.full(rows, -1, np.int64)
    if rows == 0:
        return duplicate_of
    cells = _cell_count(rows)
    index = _kept_index(parts, rows, cells, seed)
    index.nprobe = min(nprobe, cells)
    for start, part in _batches(parts, batch_size):
        batch = _normalized(part)
        ids = np.arange(start, start + len(batch))
        if index.ntotal:
            similarity, nearest = index.search(batch, 1)
            earlier = similarity[:, 0] >= threshold
            duplicate_of[ids[earlier]] = nearest[earlier, 0]
        kept = _dedup_within(batch, ids, duplicate_of, threshold)
        index.add_with_ids(batch[kept - start], kept)
        log.info("near-duplicates: %d of %d rows seen, %d kept", ids[-1] + 1, rows, index.ntotal)
    return duplicate_of


def _dedup_within(batch: np.ndarray, ids: np.ndarray, duplicate_of: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy in order among the batch's rows not yet marked; marks duplicates, returns the kept ids."""
    open_rows = np.flatnonzero(duplicate_of[ids] < 0)
    similar = batch[open_rows] @ batch[open_rows].T >= threshold
    similar[np.triu_indices(len(open_rows))] = False  # only earlier rows count
    kept = np.ones(len(open_rows), bool)
    for i in np.flatnonzero(similar.any(axis=1)):  # rows with no similar earlier row are kept outright
        matches = np.flatnonzero(similar[i] & kept)
        if len(matches):
            kept[i] = False
            duplicate_of[ids[open_rows[i]]] = ids[open_rows[matches[0]]]
    return ids[open_rows[kept]]
