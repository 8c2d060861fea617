"""The index folder: image.index, text.index, metadata.arrow, model.json and {image,text}.vectors.json, written by
the workflow and read by query, filter, serve and the notebook. Each file is listed with its size and sha256 in a
record written with it (`NAME.infos.json`, and for the trained indices and parts a `.json` beside each): the start of
a run and every reader compare sizes, `clipflow verify` the sha256s.

The faiss indices keep their inverted lists on disk (`{modality}.ivfdata`, memory-mapped) and the metadata is an
Arrow IPC file read through a memory map, so opening a large index costs little time or RAM; rows are taken by id.

An approximate index is searched for `rerank_factor` times the hits asked for, which are then ordered by their
exact inner products with the stored fp16 embeddings (clipflow.index.vectors): the exact top k whenever the
candidates hold it.
"""

import ctypes
import json
import os
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from clipflow import files, storage
from clipflow.bulk import Cache
from clipflow.errors import ClipflowError
from clipflow.index.builder import without_read_ahead
from clipflow.index.takedowns import read_takedowns
from clipflow.index.vectors import RERANK_FACTOR, StoredVectors

MODALITIES = ("image", "text")
REBUILD = "the next workflow run (snakemake) builds it again"
RESULT_COLUMNS = ("uid", "url", "caption")
MODEL_MANIFEST = "model.json"  # the model's manifest as the index was built with it: queries embed through it
RECORDED = (*MODALITIES, "metadata", "takedowns")  # what an index folder's records (`NAME.infos.json`) stand for


def write_metadata(parquets: list, path: Path | str, manifest: Path | str, cache: Cache | None = None) -> int:
    """Concatenate the chunks' metadata, in index order, into one Arrow IPC file, copy the model's manifest beside
    it and record both (`metadata.infos.json`); returns the row count. One file at a time is read, cast to the
    schema they all fit (a column a file lacks is null there), and written: the job holds one shard's metadata at
    any pool size. Files on bulk storage are read through `cache` (fetched twice where they exceed it: once for
    the schema, once for the rows)."""
    path = Path(path)
    local = cache.local if cache else Path  # at each read: a copy may go to make room for the next
    schema = files.unified_schema(local(parquet) for parquet in parquets)
    rows = 0
    with files.replacing(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for parquet in parquets:
            table = files.fitted(pq.read_table(local(parquet)), schema)
            writer.write_table(table)
            rows += table.num_rows
    copied = path.parent / MODEL_MANIFEST
    files.write_bytes(copied, Path(manifest).read_bytes())
    record = {"rows": rows, **files.written_record([path, copied], path.parent)}
    files.write_json(infos_path(path.parent, "metadata"), record)
    return rows


def _read_index(path: Path) -> faiss.Index:
    """The index with its on-disk lists found beside it, wherever the folder was moved (IO_FLAG_MMAP would crash
    on them: they are mapped anyway). faiss prints the lists' path to C's stdout as it reads, a line that tells
    nothing: it goes to /dev/null, never into the JSON lines `clipflow query` prints."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
    without_read_ahead(index)
    return index


def infos_path(folder: Path | str, name: str) -> Path:
    """The record of a modality's index files (written by its merge) or of the metadata ("metadata")."""
    return Path(folder) / f"{name}.infos.json"


def folder_records(folder: Path | str) -> list[Path]:
    """Every record in an index folder: the metadata's and the merged indices' (`NAME.infos.json`), and behind each
    index its trained index's and its parts' (what the next merge reads)."""
    folder = Path(folder)
    records = [infos_path(folder, name) for name in RECORDED]
    for modality in MODALITIES:
        records += [folder / modality / "trained.json", *sorted((folder / modality / "parts").glob("*.json"))]
    return [record for record in records if record.exists()]


def index_damage(folder: Path | str, name: str, deep: bool = False) -> list[str]:
    """What is wrong with a modality's index files, or the metadata's ("metadata"), by the record of them written
    with them (their sizes, or with `deep` their sha256 too); nothing is known of files written before records."""
    record = infos_path(folder, name)
    return files.record_damage(json.loads(record.read_text()), folder, deep) if record.exists() else []


def short_lists(index: faiss.Index) -> str | None:
    """Whether the on-disk lists an index maps are shorter than it says (what a record cannot tell where there is
    none: an index folder from before the records, or one whose record a run has just removed)."""
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        return None
    size = os.path.getsize(lists.filename) if os.path.exists(lists.filename) else 0
    return f"{lists.filename}: {size} bytes, {lists.totsize} listed" if size < lists.totsize else None


def is_exact(index: faiss.Index) -> bool:
    """A flat scan: one inverted list of full vectors (or a Flat index, as earlier versions wrote below exact_below)."""
    if isinstance(index, faiss.IndexFlat):
        return True
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and ivf.nlist == 1 and ivf.code_size == ivf.d * 4  # codes of IVFFlat: the floats


class ClipIndex:
    def __init__(self, folder: Path | str, rerank_factor: int = RERANK_FACTOR):
        if not isinstance(rerank_factor, int) or rerank_factor < 1:
            raise ClipflowError(f"rerank_factor must be a whole number of 1 or more, not {rerank_factor!r}")
        # A URL's folder is read from a checked local copy; the embeddings it re-ranks with stay where they are.
        if storage.is_url(folder):
            self.location = str(folder).rstrip("/")
            self.folder = storage.local_index_folder(self.location)
        else:
            self.location = self.folder = Path(folder)
        self.rerank_factor = rerank_factor
        missing = [name for name in ("metadata.arrow", MODEL_MANIFEST) if not (self.folder / name).exists()]
        if not self.folder.is_dir() or missing:
            raise ClipflowError(
                f"{self.folder}: not an index folder (missing {missing or 'the folder'}); run the workflow first"
            )
        damage = index_damage(self.folder, "metadata") + index_damage(self.folder, "takedowns")  # mapped, trusted
        if damage:
            raise ClipflowError(f"damaged index metadata: {'; '.join(damage)}; {REBUILD}")
        self.taken_down = read_takedowns(self.folder)  # ids every search leaves out (clipflow.index.takedowns)
        try:
            self.metadata = pa.ipc.open_file(pa.memory_map(str(self.folder / "metadata.arrow"))).read_all()
        except (pa.ArrowInvalid, OSError) as error:
            raise ClipflowError(f"{self.folder / 'metadata.arrow'}: damaged ({error}); {REBUILD}") from None
        # Rows are fetched batch by batch: Table.take over many record batches costs ~40 ms at 1M rows.
        self._batches = self.metadata.to_batches()
        self._batch_starts = np.cumsum([0] + [batch.num_rows for batch in self._batches])
        self.model_manifest = self.folder / MODEL_MANIFEST
        self._indices = {}
        self._stored = {}

    def index(self, modality: str) -> faiss.Index:
        if modality not in MODALITIES:
            raise ClipflowError(f"modality must be one of {MODALITIES}, not {modality!r}")
        if modality not in self._indices:
            path = self.folder / f"{modality}.index"
            if not path.exists():
                raise ClipflowError(f"{path}: no {modality} index in {self.folder}")
            # faiss maps the lists: a short file would kill the process (SIGBUS) at the first search
            damage = index_damage(self.folder, modality)
            if damage:
                raise ClipflowError(f"damaged index: {'; '.join(damage)}; {REBUILD}")
            try:
                index = _read_index(path)
            except RuntimeError as error:
                why = str(error).splitlines()[-1]
                raise ClipflowError(f"{path}: faiss cannot read it ({why}); {REBUILD}") from None
            short = short_lists(index)
            if short:
                raise ClipflowError(f"damaged index: {short}; {REBUILD}")
            self._indices[modality] = index
            if self._indices[modality].ntotal != self.metadata.num_rows:
                raise ClipflowError(
                    f"{path}: {self._indices[modality].ntotal} vectors for {self.metadata.num_rows} metadata rows"
                )
        return self._indices[modality]

    def stored(self, modality: str) -> StoredVectors | None:
        """The stored embeddings behind the index (None for an index folder written before they were listed)."""
        if modality not in self._stored:
            manifest = self.folder / f"{modality}.vectors.json"
            stored = StoredVectors.from_manifest(self.location, manifest) if manifest.exists() else None
            if stored is not None and len(stored) != self.metadata.num_rows:
                raise ClipflowError(f"{manifest}: {len(stored)} vectors for {self.metadata.num_rows} metadata rows")
            self._stored[modality] = stored
        return self._stored[modality]

    def reranks(self, modality: str) -> bool:
        return self.rerank_factor > 1 and not is_exact(self.index(modality)) and self.stored(modality) is not None

    def search(
        self, vectors: np.ndarray, modality: str, k: int, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and ids (best first) for each query vector; ids of -1 mean fewer than k hits. Rows taken
        down (the folder's takedowns, and the sorted ids `excluded`) are left out: the index is asked again for
        as many more candidates as it returned of them, until k others remain or it has no more."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
        down = self.taken_down if excluded is None or not len(excluded) else np.union1d(self.taken_down, excluded)
        if not len(down):
            return self._search(vectors, modality, k)
        asked = k
        while True:
            similarities, ids = self._search(vectors, modality, asked)
            left_out = down[np.searchsorted(down, ids).clip(0, len(down) - 1)] == ids  # (`down` is sorted)
            kept = ((ids >= 0) & ~left_out).sum(axis=1)
            exhausted = (ids >= 0).sum(axis=1) < asked
            if np.all((kept >= k) | exhausted) or asked >= self.metadata.num_rows:
                break
            asked = min(self.metadata.num_rows, asked + 2 * int(left_out.sum(axis=1).max()))
        out_similarities = np.full((len(ids), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(ids), k), -1, dtype=np.int64)
        for query in range(len(ids)):
            keep = np.flatnonzero((ids[query] >= 0) & ~left_out[query])[:k]
            out_similarities[query, : len(keep)] = similarities[query, keep]
            out_ids[query, : len(keep)] = ids[query, keep]
        return out_similarities, out_ids

    def _search(self, vectors: np.ndarray, modality: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.reranks(modality):
            return self.index(modality).search(vectors, k)
        _, candidates = self.index(modality).search(vectors, k * self.rerank_factor)
        return self._rerank(vectors, candidates, self.stored(modality), k)

    @staticmethod
    def _rerank(vectors: np.ndarray, candidates: np.ndarray, stored: StoredVectors, k: int) -> tuple:
        similarities = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        ids = np.full((len(vectors), k), -1, dtype=np.int64)
        unique, positions = np.unique(candidates[candidates >= 0], return_inverse=True)
        exact = stored.take(unique) if len(unique) else np.empty((0, vectors.shape[1]), dtype=np.float32)
        at = np.full(candidates.shape, -1, dtype=np.int64)
        at[candidates >= 0] = positions
        for query, vector in enumerate(vectors):
            found = at[query][at[query] >= 0]
            scores = exact[found] @ vector
            best = np.argsort(-scores, kind="stable")[:k]
            similarities[query, : len(best)] = scores[best]
            ids[query, : len(best)] = unique[found[best]]
        return similarities, ids

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
        """The vectors of `ids`, normalized: the stored embeddings, or for a flat index written before they were
        listed, what it holds."""
        ids = np.asarray(ids, dtype=np.int64)
        stored = self.stored(modality)
        if stored is not None and len(ids):
            vectors = stored.take(ids)
        elif isinstance(self.index(modality), faiss.IndexFlat):
            vectors = self.index(modality).reconstruct_batch(ids).astype(np.float32)
        else:
            raise ClipflowError(
                f"{self.folder}: no {modality}.vectors.json, and the index cannot give its vectors back"
            )
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def single_threaded_search() -> None:
    """faiss's OpenMP thread count is per thread: call this in each thread that searches. Batched queries
    are small, and OpenMP threads would spin between them, taking the CPU of the event loop."""
    faiss.omp_set_num_threads(1)
