"""Exact deduplication on (url, caption) keys with memory bounded by one hash bucket.

Keys are spilled to disk by their first byte (256 buckets); each bucket is then deduplicated alone
against the keys of everything planned before. DataComp-small (12.8M rows) holds ~50k keys a bucket.
"""

import os
import shutil
from pathlib import Path

import numpy as np

from clipflow.ingest.keys import KEY_DTYPE

BUCKETS = 256
SPILL_DTYPE = np.dtype([("key", KEY_DTYPE), ("seq", "<i8")])


def _bucket_of(keys: np.ndarray) -> np.ndarray:
    return np.frombuffer(keys.tobytes(), dtype=np.uint8)[:: KEY_DTYPE.itemsize]


class KeySpill:
    """Appends (key, sequence number) pairs to one file per bucket."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, keys: np.ndarray, seqs: np.ndarray) -> None:
        records = np.empty(len(keys), dtype=SPILL_DTYPE)
        records["key"], records["seq"] = keys, seqs
        buckets = _bucket_of(keys)
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(BUCKETS + 1))
        for bucket in np.flatnonzero(np.diff(bounds)):
            with open(self.folder / f"{bucket:03d}.bin", "ab") as f:
                records[order[bounds[bucket] : bounds[bucket + 1]]].tofile(f)

    def bucket(self, bucket: int) -> np.ndarray:
        path = self.folder / f"{bucket:03d}.bin"
        return np.fromfile(path, dtype=SPILL_DTYPE) if path.exists() else np.empty(0, SPILL_DTYPE)


class KeyStore:
    """The sorted keys of every row planned so far, one .npy a bucket."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None

    def bucket(self, bucket: int) -> np.ndarray:
        path = self.folder / f"{bucket:03d}.npy" if self.folder else None
        return np.load(path) if path and path.exists() else np.empty(0, KEY_DTYPE)


def deduplicate(spill: KeySpill, previous: KeyStore, updated_folder: Path) -> np.ndarray:
    """Sorted sequence numbers of spilled rows that repeat an earlier key, new or previously planned.

    Writes the previous keys plus the new distinct ones to `updated_folder`; `previous` is left untouched
    so that an interrupted plan never corrupts it.
    """
    updated_folder = Path(updated_folder)
    updated_folder.mkdir(parents=True, exist_ok=True)
    duplicates = []
    for bucket in range(BUCKETS):
        new = spill.bucket(bucket)
        known = previous.bucket(bucket)
        target = updated_folder / f"{bucket:03d}.npy"
        if len(new) == 0:
            if len(known):
                shutil.copyfile(previous.folder / f"{bucket:03d}.npy", target)
            continue
        # Spill order is input order, and np.unique's return_index (a stable sort) finds first occurrences.
        distinct, first = np.unique(new["key"], return_index=True)
        repeated = np.ones(len(new), dtype=bool)
        repeated[first] = False
        repeated |= np.isin(new["key"], known)
        duplicates.append(new["seq"][repeated])
        np.save(target, np.union1d(known, distinct))
    return np.sort(np.concatenate(duplicates)) if duplicates else np.empty(0, np.int64)


def remove_tree(folder: Path) -> None:
    if os.path.exists(folder):
        shutil.rmtree(folder)
