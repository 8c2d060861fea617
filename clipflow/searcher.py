"""Query an index folder: image.index, text.index, metadata.arrow and model.json from the workflow.

The faiss indices are memory-mapped where their type allows it and the metadata is an Arrow IPC file
read through a memory map, so opening a large index costs little time or RAM; rows are taken by id.
"""

import io
import tarfile
import urllib.request
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
from PIL import Image

from clipflow.errors import ClipflowError

MODALITIES = ("image", "text")
RESULT_COLUMNS = ("uid", "url", "caption")


def write_metadata(parquets: list, path: Path | str) -> int:
    """Concatenate the chunks' metadata, in index order, into one Arrow IPC file; returns the row count."""
    tables = [pq.read_table(p) for p in parquets]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    tmp = Path(str(path) + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    tmp.replace(path)
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


class ShardReader:
    """Reads samples straight out of the webdataset shards, each tar's member offsets read once."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.members: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}  # shard -> key -> ext -> place

    def _members(self, shard: str) -> dict:
        if shard not in self.members:
            path = self.folder / f"{shard}.tar"
            self.members[shard] = {}
            if path.exists():
                with tarfile.open(path) as tar:
                    for member in tar.getmembers():
                        key, _, ext = member.name.partition(".")
                        self.members[shard].setdefault(key, {})[ext] = (member.offset_data, member.size)
        return self.members[shard]

    def sample(self, shard: str, key: str, exts: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """The files of sample `key` in shard `shard` by extension, all or those in `exts`
        ({} when there is no such sample)."""
        places = self._members(shard).get(key, {})
        wanted = [(ext, place) for ext, place in places.items() if exts is None or ext in exts]
        sample = {}
        if wanted:
            with open(self.folder / f"{shard}.tar", "rb") as f:
                for ext, (offset, size) in wanted:
                    f.seek(offset)
                    sample[ext] = f.read(size)
        return sample

    def image_bytes(self, shard: str, key: str) -> bytes | None:
        """The JPEG of sample `key` in shard `shard`, or None when there is no such sample."""
        return self.sample(shard, key, ("jpg",)).get("jpg")


def load_image(source: str, timeout: float = 10) -> Image.Image:
    """An image from a local path or an http(s) URL, with an error that says which and why."""
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=timeout) as response:
                data = response.read()
        else:
            data = Path(source).read_bytes()
        image = Image.open(io.BytesIO(data))
        return image.convert("RGB")
    except Exception as error:
        raise ClipflowError(f"{source}: cannot read an image: {error}") from error
