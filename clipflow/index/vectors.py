"""The stored embeddings behind an index, for exact re-ranking: `{modality}.vectors.json` in the index folder lists
the per-shard fp16 embedding files in id order (paths relative to the folder) with their row counts; rows are read
through memory maps, a file at a time, never the whole collection."""

import json
import os
from pathlib import Path

import numpy as np

from clipflow import files, storage
from clipflow.errors import ClipflowError

RERANK_FACTOR = 4  # candidates per hit asked for, re-ranked exactly (1: the approximate order as it comes)
OPEN_FILES = 1024  # memory maps kept open (each holds a file descriptor); the oldest closes first


def row_counts(paths: list) -> list[int]:
    """The rows of each .npy file, from its header."""
    return [int(np.load(path, mmap_mode="r").shape[0]) for path in paths]


def write_manifest(paths: list, folder: Path | str, manifest: Path | str) -> int:
    """List `paths` (in id order) with their row counts in `manifest`; returns the total rows."""
    entries = [[os.path.relpath(path, folder), rows] for path, rows in zip(paths, row_counts(paths))]
    files.write_json(manifest, {"files": entries})
    return sum(rows for _, rows in entries)


class StoredVectors:
    """Rows of per-shard embedding files (`paths`, holding `rows` rows each) by their number across all of them."""

    def __init__(self, paths: list, rows: list[int]):
        self.paths = [path if storage.is_url(path) else Path(path) for path in paths]
        self.starts = np.cumsum([0] + list(rows))
        self.maps: dict[int, np.ndarray] = {}

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
            try:
                self.maps[number] = np.load(path, mmap_mode="r")
            except OSError as error:
                raise ClipflowError(f"{self.paths[number]}: an embedding file is missing: {error}") from None
        return self.maps[number]

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
