"""The stored embeddings behind an index, for exact re-ranking: `{modality}.vectors.json` in the index folder lists
the per-shard fp16 embedding files in id order (paths relative to the folder) with their row counts; rows are read
through memory maps, a file at a time, never the whole collection."""

import json
import os
from pathlib import Path

import numpy as np

from clipflow import files, storage
from clipflow.bulk import Cache
from clipflow.errors import ClipflowError

RERANK_FACTOR = 4  # candidates per hit asked for, re-ranked exactly (1: the approximate order as it comes)
OPEN_FILES = 1024  # memory maps kept open (each holds a file descriptor); the oldest closes first


def row_counts(paths: list, cache: Cache | None = None) -> list[int]:
    """The rows of each .npy file, from its header: of a file the `cache` would fetch, a ranged read of it."""
    urls = [cache.url(path) if cache else None for path in paths]
    return [
        int((storage.RemoteRows(url) if url else np.load(path, mmap_mode="r")).shape[0])
        for path, url in zip(paths, urls)
    ]


def write_manifest(paths: list, folder: Path | str, manifest: Path | str, cache: Cache | None = None) -> int:
    """List `paths` (in id order) with their row counts in `manifest`; returns the total rows. Of a file on bulk
    storage (`cache`), the count is read from its header on the storage: nothing is fetched."""
    entries = [[os.path.relpath(path, folder), rows] for path, rows in zip(paths, row_counts(paths, cache))]
    files.write_json(manifest, {"files": entries})
    return sum(rows for _, rows in entries)


class StoredVectors:
    """Rows of per-shard embedding files (`paths`, holding `rows` rows each) by their number across all of them.
    A path may be a URL (its rows read by ranged requests) or a file on bulk storage, read through `cache`."""

    def __init__(self, paths: list, rows: list[int], cache: Cache | None = None):
        self.paths = [path if storage.is_url(path) else Path(path) for path in paths]
        self.starts = np.cumsum([0] + list(rows))
        self.maps: dict[int, np.ndarray] = {}
        self.cache = cache

    @classmethod
    def of(cls, paths: list, cache: Cache | None = None) -> "StoredVectors":
        """The files `paths`, with their rows read from their headers."""
        return cls(paths, row_counts(paths, cache), cache)

    @classmethod
    def from_manifest(cls, folder: Path | str, manifest: Path | str) -> "StoredVectors":
        """The files a manifest lists, relative to `folder` (a local folder or a URL)."""
        entries = json.loads(Path(manifest).read_text())["files"]
        if storage.is_url(folder):
            return cls([storage.joined(str(folder), path) for path, _ in entries], [rows for _, rows in entries])
        return cls([Path(folder) / path for path, _ in entries], [rows for _, rows in entries])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _file(self, number: int) -> np.ndarray:
        if number not in self.maps:
            if len(self.maps) >= OPEN_FILES:
                self.maps.pop(next(iter(self.maps)))
            path = self.paths[number]
            if storage.is_url(path):
                self.maps[number] = storage.RemoteRows(path)
                return self.maps[number]
            if self.cache is not None:
                path = self.cache.local(path)
                self.maps = {n: rows for n, rows in self.maps.items() if self.cache.holds(self.paths[n])}
            try:
                self.maps[number] = np.load(path, mmap_mode="r")
            except OSError as error:
                raise ClipflowError(f"{self.paths[number]}: an embedding file is missing: {error}") from None
        return self.maps[number]

    def between(self, start: int, end: int) -> np.ndarray:
        """Rows [start, end) as stored (fp16 embeddings stay fp16)."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        for number in range(max(first, 0), len(self.paths)):
            if self.starts[number] >= end:
                break
            parts.append(self._file(number)[max(start - self.starts[number], 0) : end - self.starts[number]])
        if not parts:
            return np.asarray(self._file(len(self.paths) - 1)[:0])
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (in that order) as float32."""
        ids = np.asarray(ids, dtype=np.int64)
        numbers = np.searchsorted(self.starts, ids, side="right") - 1
        out = None
        for number in np.unique(numbers):
            where = np.flatnonzero(numbers == number)
            rows = self._file(int(number))[ids[where] - self.starts[number]]
            if out is None:
                out = np.empty((len(ids), rows.shape[1]), dtype=np.float32)
            out[where] = rows
        return out if out is not None else np.empty((0, 0), dtype=np.float32)
