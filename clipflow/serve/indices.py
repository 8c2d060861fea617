"""The served indices: each an index folder with its encoder, optional shards and batched searchers."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipflow.errors import ClipflowError
from clipflow.index.folder import MODALITIES, ClipIndex, single_threaded_search
from clipflow.serve.batcher import MicroBatcher
from clipflow.serve.encoders import Encoder
from clipflow.shards import ShardReader

DEDUPLICATE_COSINE = 0.94  # clip-retrieval's threshold for near-duplicate results


@dataclass
class ServedIndex:
    name: str
    index: ClipIndex
    encoder: Encoder
    shards: ShardReader | None
    searchers: dict = field(default_factory=dict)

    def searcher(self, modality: str, max_batch: int) -> MicroBatcher:
        if modality not in self.searchers:
            faiss_index = self.index.index(modality)

            def search(queries):
                vectors = np.stack([vector for vector, _ in queries]).astype(np.float32)
                similarities, ids = faiss_index.search(vectors, max(k for _, k in queries))
                return [(s[:k], i[:k]) for (_, k), s, i in zip(queries, similarities, ids)]

            self.searchers[modality] = MicroBatcher(
                search, max_batch, f"search-{self.name}-{modality}", single_threaded_search
            )
        return self.searchers[modality]

    def image_bytes(self, row_id: int) -> bytes | None:
        if self.shards is None or not 0 <= row_id < self.index.metadata.num_rows:
            return None
        row = self.index.rows([row_id])[0]
        if not row.get("shard") or not row.get("key"):
            return None
        return self.shards.image_bytes(row["shard"], row["key"])


def load_indices(indices_json: Path | str, max_batch: int, precision: str) -> dict[str, ServedIndex]:
    """indices.json: {"name": {"index": "results/index", "shards": "results/shards", "search_params": "nprobe=64"}};
    paths relative to it; shards and search_params (faiss ParameterSpace syntax, as autofaiss's index_param) optional.
    """
    path = Path(indices_json)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ClipflowError(f"{path}: cannot read the indices file: {error}") from error
    if not isinstance(spec, dict) or not spec:
        raise ClipflowError(f'{path}: expected {{"name": {{"index": FOLDER, "shards": FOLDER}}, ...}}')
    encoders: dict[bytes, Encoder] = {}
    served = {}
    for name, entry in spec.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), str):
            raise ClipflowError(f'{path}: index {name!r} needs {{"index": FOLDER}} (and optionally "shards")')
        unknown = set(entry) - {"index", "shards", "search_params"}
        if unknown:
            raise ClipflowError(f"{path}: index {name!r} has unknown keys {sorted(unknown)}")
        index = ClipIndex(path.parent / entry["index"])
        for modality in MODALITIES:
            index.index(modality)  # fail at start, not at the first query
        if entry.get("search_params"):
            try:
                index.set_search_params(entry["search_params"])
            except ClipflowError as error:
                raise ClipflowError(f"{path}: index {name!r}: {error}") from None
        manifest = index.model_manifest.read_bytes()
        if manifest not in encoders:
            encoders[manifest] = Encoder(index.model_manifest, max_batch, precision)
        shards = ShardReader(path.parent / entry["shards"]) if entry.get("shards") else None
        served[name] = ServedIndex(name, index, encoders[manifest], shards)
    return served


def distinct(index: ClipIndex, modality: str, ids: np.ndarray) -> np.ndarray:
    """Positions of results kept when each drops if it is a near-duplicate of a better-ranked kept one."""
    if len(ids) < 2:
        return np.arange(len(ids))
    vectors = index.vectors(modality, ids)
    similar = (vectors @ vectors.T) >= DEDUPLICATE_COSINE
    kept = []
    dropped = np.zeros(len(ids), dtype=bool)
    for position in range(len(ids)):
        if dropped[position]:
            continue
        kept.append(position)
        dropped |= similar[position]
    return np.array(kept, dtype=np.int64)
