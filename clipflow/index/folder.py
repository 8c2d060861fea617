"""The index folder: image.index, text.index, metadata.arrow and model.json, written by the workflow
and read by query, filter, serve and the notebook.

The faiss indices are memory-mapped where their type allows it and the metadata is an Arrow IPC file
read through a memory map, so opening a large index costs little time or RAM; rows are taken by id.
"""

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from clipflow import files
from clipflow.errors import ClipflowError

MODALITIES = ("image", "text")
RESULT_COLUMNS = ("uid", "url", "caption")


def write_metadata(parquets: list, path: Path | str) -> int:
    """Concatenate the chunks' metadata, in index order, into one Arrow IPC file; returns the row count."""
    tables = [pq.read_table(p) for p in parquets]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    with files.replacing(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return table.num_rows


def _read_index(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:  # index types faiss cannot map are read whole
        return faiss.read_index(str(path))


class ClipIndex:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        missing = [name for name in ("metadata.arrow", "model.json") if not (self.folder / name).exists()]
        if not self.folder.is_dir() or missing:
            raise ClipflowError(
                f"{self.folder}: not an index folder (missing {missing or 'the folder'}); run the workflow first"
            )
        self.metadata = pa.ipc.open_file(pa.memory_map(str(self.folder / "metadata.arrow"))).read_all()
        # Rows are fetched batch by batch: Table.take over many record batches costs ~40 ms at 1M rows.
        self._batches = self.metadata.to_batches()
        self._batch_starts = np.cumsum([0] + [batch.num_rows for batch in self._batches])
        self.model_manifest = self.folder / "model.json"
        self._indices = {}

    def index(self, modality: str) -> faiss.Index:
        if modality not in MODALITIES:
            raise ClipflowError(f"modality must be one of {MODALITIES}, not {modality!r}")
        if modality not in self._indices:
            path = self.folder / f"{modality}.index"
            if not path.exists():
                raise ClipflowError(f"{path}: no {modality} index in {self.folder}")
            self._indices[modality] = _read_index(path)
            if self._indices[modality].ntotal != self.metadata.num_rows:
                raise ClipflowError(
                    f"{path}: {self._indices[modality].ntotal} vectors for {self.metadata.num_rows} metadata rows"
                )
        return self._indices[modality]

    def search(self, vectors: np.ndarray, modality: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and ids (best first) for each query vector; ids of -1 mean fewer than k hits."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
        return self.index(modality).search(vectors, k)

    def rows(self, ids) -> list[dict]:
        ids = np.asarray(ids, dtype=np.int64)
        batches = np.searchsorted(self._batch_starts, ids, side="right") - 1
        return [
            self._batches[batch].slice(row - self._batch_starts[batch], 1).to_pylist()[0]
            for batch, row in zip(batches, ids)
        ]

    def set_search_params(self, params: str) -> None:
        """faiss ParameterSpace settings (e.g. "nprobe=64,efSearch=128") on both indices."""
        for modality in MODALITIES:
            try:
                faiss.ParameterSpace().set_index_parameters(self.index(modality), params)
            except RuntimeError as error:
                raise ClipflowError(f"search_params {params!r}: {error}") from None

    def vectors(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids`, normalized (an approximate index returns approximations)."""
        vectors = self.index(modality).reconstruct_batch(np.asarray(ids, dtype=np.int64)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def single_threaded_search() -> None:
    """faiss's OpenMP thread count is per thread: call this in each thread that searches. Batched queries
    are small, and OpenMP threads would spin between them, taking the CPU of the event loop."""
    faiss.omp_set_num_threads(1)
