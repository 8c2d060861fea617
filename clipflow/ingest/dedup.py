"""Exact deduplication on (url, caption) keys, and of given uids, with memory bounded by one hash bucket.

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


def _first_occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_index=True) (the sorted distinct keys, each one's first place) for keys in input
    order, in less time: the keys are sorted as integers on their first 8 bytes (stably, so the first of equal
    keys is its first occurrence), and on all 16 only when two different keys share those 8 bytes (md5 digests:
    about once in 2^64 pairs)."""
    halves = np.ascontiguousarray(keys).view(">u8").astype(np.uint64)  # byte order is key order
    high, low = halves[0::2], halves[1::2]
    order = np.argsort(high, kind="stable")
    new_high, new_low = (np.diff(half[order]) != 0 for half in (high, low))
    if (new_low & ~new_high).any():
        order = np.lexsort((low, high))
        new_high, new_low = (np.diff(half[order]) != 0 for half in (high, low))
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = new_high | new_low
    return keys[order[starts]], order[starts]


def deduplicate(
    buckets: range, spills: list[KeySpill], previous: KeyStore, updated_folder: Path
) -> tuple[np.ndarray, np.ndarray]:
    """(repeats, firsts): the sorted sequence numbers of spilled rows in `buckets` that repeat an earlier key,
    new or previously planned, and for each the sequence number of the row it repeats (-1: a row of an earlier
    plan).

    `spills` are in input order. Writes the previous keys plus the new distinct ones to `updated_folder`;
    `previous` is left untouched so that an interrupted plan never corrupts it. Buckets are independent, so
    ranges of them run in parallel.
    """
    updated_folder = Path(updated_folder)
    updated_folder.mkdir(parents=True, exist_ok=True)
    repeats, firsts = [], []
    for bucket, *spilled in zip(buckets, *(spill.buckets(buckets) for spill in spills)):
        keys = np.concatenate([keys for keys, _ in spilled] or [np.empty(0, KEY_DTYPE)])
        seqs = np.concatenate([seqs for _, seqs in spilled] or [np.empty(0, np.int64)])
        known = previous.bucket(bucket)
        target = updated_folder / f"{bucket:03d}.npy"
        if len(keys) == 0:
            if len(known):
                shutil.copyfile(previous.folder / f"{bucket:03d}.npy", target)
            continue
        # A row is new only as the first occurrence of a key not planned before: one isin per distinct key.
        distinct, first = _first_occurrences(keys)
        planned_before = np.isin(distinct, known)
        repeated = np.ones(len(keys), dtype=bool)
        repeated[first[~planned_before]] = False
        repeats.append(seqs[repeated])
        of_key = np.searchsorted(distinct, keys[repeated])  # the distinct keys are sorted
        firsts.append(np.where(planned_before[of_key], -1, seqs[first[of_key]]))
        unseen = distinct[~planned_before]
        np.save(target, np.sort(np.concatenate([known, unseen])) if len(known) else unseen)
    if not repeats:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    repeats, firsts = np.concatenate(repeats), np.concatenate(firsts)
    order = np.argsort(repeats)
    return repeats[order], firsts[order]


def remove_tree(folder: Path) -> None:
    if os.path.islink(folder):  # a dry run's link to the key store it reads: the store itself stays
        os.unlink(folder)
    elif os.path.exists(folder):
        shutil.rmtree(folder)
