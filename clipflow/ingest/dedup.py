"""Exact deduplication on (url, caption) keys with memory bounded by one hash bucket.

Keys are spilled to disk by their first byte (256 buckets); each bucket is then deduplicated alone
against the keys of everything planned before. DataComp-small (12.8M rows) holds ~50k keys a bucket,
DataComp-large (1.28B) ~5M: ~120 MB of spilled pairs and ~80 MB of known keys.
"""

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from clipflow.ingest.keys import KEY_DTYPE

BUCKETS = 256
SPILL_ROWS = 1 << 20  # pairs held before they are written out: ~24 MB


def _bucket_of(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys).view(np.uint8)[:: KEY_DTYPE.itemsize]


class KeySpill:
    """(key, sequence number) pairs written out in chunks, each sorted by bucket (stably, so that a bucket's
    pairs stay in input order) beside the bounds of its buckets. A chunk is three files whatever the bucket
    count: creating a file costs ~0.5 ms on these disks, more than writing a bucket's pairs."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_rows = 0
        self.chunks = len(list(self.folder.glob("*.bounds.npy")))

    def add(self, keys: np.ndarray, seqs: np.ndarray) -> None:
        self.pending.append((keys, seqs))
        self.pending_rows += len(keys)
        if self.pending_rows >= SPILL_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending_rows:
            return
        keys = np.concatenate([keys for keys, _ in self.pending])
        seqs = np.concatenate([seqs for _, seqs in self.pending])
        self.pending, self.pending_rows = [], 0
        buckets = _bucket_of(keys)
        order = np.argsort(buckets, kind="stable")  # a radix sort of bytes
        chunk = self.folder / f"{self.chunks:06d}"
        np.save(f"{chunk}.keys.npy", keys[order])
        np.save(f"{chunk}.seqs.npy", seqs[order])
        np.save(f"{chunk}.bounds.npy", np.searchsorted(buckets[order], np.arange(BUCKETS + 1)))
        self.chunks += 1

    def buckets(self, buckets: range) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each bucket's (keys, sequence numbers) in input order, reading each chunk once (memory-mapped)."""
        chunks, mapped = [], partial(np.load, mmap_mode="r")
        for number in range(self.chunks):
            chunk = self.folder / f"{number:06d}"
            chunks.append((mapped(f"{chunk}.keys.npy"), mapped(f"{chunk}.seqs.npy"), np.load(f"{chunk}.bounds.npy")))
        for bucket in buckets:
            spans = [(keys, seqs, slice(bounds[bucket], bounds[bucket + 1])) for keys, seqs, bounds in chunks]
            yield (
                np.concatenate([keys[span] for keys, _, span in spans] or [np.empty(0, KEY_DTYPE)]),
                np.concatenate([seqs[span] for _, seqs, span in spans] or [np.empty(0, np.int64)]),
            )


class KeyStore:
    """The sorted keys of every row planned so far, one .npy a bucket."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None

    def bucket(self, bucket: int) -> np.ndarray:
        path = self.folder / f"{bucket:03d}.npy" if self.folder else None
        return np.load(path) if path and path.exists() else np.empty(0, KEY_DTYPE)


def deduplicate(buckets: range, spills: list[KeySpill], previous: KeyStore, updated_folder: Path) -> np.ndarray:
    """Sorted sequence numbers of spilled rows in `buckets` that repeat an earlier key, new or previously planned.

    `spills` are in input order. Writes the previous keys plus the new distinct ones to `updated_folder`;
    `previous` is left untouched so that an interrupted plan never corrupts it. Buckets are independent, so
    ranges of them run in parallel.
    """
    updated_folder = Path(updated_folder)
    updated_folder.mkdir(parents=True, exist_ok=True)
    duplicates = []
    for bucket, *spilled in zip(buckets, *(spill.buckets(buckets) for spill in spills)):
        keys = np.concatenate([keys for keys, _ in spilled] or [np.empty(0, KEY_DTYPE)])
        seqs = np.concatenate([seqs for _, seqs in spilled] or [np.empty(0, np.int64)])
        known = previous.bucket(bucket)
        target = updated_folder / f"{bucket:03d}.npy"
        if len(keys) == 0:
            if len(known):
                shutil.copyfile(previous.folder / f"{bucket:03d}.npy", target)
            continue
        # Spill order is input order, and np.unique's return_index (a stable sort) finds first occurrences.
        # A row is new only as the first occurrence of a key not planned before: one isin per distinct key.
        distinct, first = np.unique(keys, return_index=True)
        planned_before = np.isin(distinct, known)
        repeated = np.ones(len(keys), dtype=bool)
        repeated[first[~planned_before]] = False
        duplicates.append(seqs[repeated])
        unseen = distinct[~planned_before]
        np.save(target, np.sort(np.concatenate([known, unseen])) if len(known) else unseen)
    return np.sort(np.concatenate(duplicates)) if duplicates else np.empty(0, np.int64)


def remove_tree(folder: Path) -> None:
    if os.path.exists(folder):
        shutil.rmtree(folder)
