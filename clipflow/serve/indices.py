"""The served indices: each an index folder with its encoder, optional shards, optional aesthetic embeddings
and safety model, and batched searchers."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipflow import storage
from clipflow.embed.heads import RATINGS, SAFETY, UNSAFE_ABOVE, Head, load_head, unsafe_probability
from clipflow.errors import ClipflowError
from clipflow.index.folder import MODALITIES, ClipIndex, single_threaded_search
from clipflow.index.vectors import RERANK_FACTOR
from clipflow.serve.batcher import MicroBatcher
from clipflow.serve.encoders import Encoder, ImageDecoder
from clipflow.serve.limits import Limits
from clipflow.serve.takedowns import Takedowns
from clipflow.shards import ShardReader, StoredShardReader

DEDUPLICATE_COSINE = 0.94  # clip-retrieval's threshold for near-duplicate results


@dataclass
class ServedIndex:
    name: str
    index: ClipIndex
    encoder: Encoder
    shards: ShardReader | None
    aesthetic_embeddings: np.ndarray | None = None  # one row per rating, as clip-retrieval's rating{k}.npy
    safety: Head | None = None
    takedowns: Takedowns | None = None
    searchers: dict = field(default_factory=dict)

    def searcher(self, modality: str, max_batch: int) -> MicroBatcher:
        if modality not in self.searchers:

            def search(queries):
                vectors = np.stack([vector for vector, _ in queries]).astype(np.float32)
                excluded = self.takedowns.blocked if self.takedowns else None
                similarities, ids = self.index.search(vectors, modality, max(k for _, k in queries), excluded)
                return [(s[:k], i[:k]) for (_, k), s, i in zip(queries, similarities, ids)]

            self.searchers[modality] = MicroBatcher(
                search, max_batch, f"search-{self.name}-{modality}", single_threaded_search
            )
        return self.searchers[modality]

    def safe(self, ids: np.ndarray) -> np.ndarray:
        """Which results the safety model lets through, judged on their image embeddings."""
        return unsafe_probability(self.safety, self.index.vectors("image", ids)) <= UNSAFE_ABOVE

    def taken_down(self, ids) -> np.ndarray:
        """Which of `ids` are taken down: by the index folder's takedowns or the service's blocklist."""
        down = np.isin(np.asarray(ids, dtype=np.int64), self.index.taken_down)
        return down | self.takedowns.holds(ids) if self.takedowns else down

    def image_bytes(self, row_id: int) -> bytes | None:
        if self.shards is None or not 0 <= row_id < self.index.metadata.num_rows or self.taken_down([row_id])[0]:
            return None
        row = self.index.rows([row_id])[0]
        if not row.get("shard") or not row.get("key"):
            return None
        return self.shards.image_bytes(row["shard"], row["key"])


def load_indices(indices_json: Path | str, limits: Limits) -> dict[str, ServedIndex]:
    """indices.json: {"name": {"index": "results/index", "shards": "results/shards", ...}}, paths relative to it.
    Optional keys: shards, search_params (faiss ParameterSpace syntax, as autofaiss's index_param), rerank_factor
    (candidates per result that an approximate index returns for exact re-ranking; 1 turns it off),
    aesthetic_embeddings (a folder of clip-retrieval's rating0.npy .. rating9.npy), safety_model (the NSFW
    detector's weights, see clipflow.embed.heads) and blocklist (files of rows never to serve, clipflow.blocklist,
    each a path or {"path": ..., "key": KIND}; reloaded when they change, clipflow.serve.takedowns).
    """
    path = Path(indices_json)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ClipflowError(f"{path}: cannot read the indices file: {error}") from error
    if not isinstance(spec, dict) or not spec:
        raise ClipflowError(f'{path}: expected {{"name": {{"index": FOLDER, "shards": FOLDER}}, ...}}')
    decoder = ImageDecoder(limits)
    encoders: dict[bytes, Encoder] = {}
    served = {}
    for name, entry in spec.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), str):
            raise ClipflowError(f'{path}: index {name!r} needs {{"index": FOLDER}} (and optionally "shards")')
        unknown = set(entry) - {
            "index",
            "shards",
            "search_params",
            "rerank_factor",
            "aesthetic_embeddings",
            "safety_model",
            "blocklist",
        }
        if unknown:
            raise ClipflowError(f"{path}: index {name!r} has unknown keys {sorted(unknown)}")
        try:
            location = entry["index"] if storage.is_url(entry["index"]) else path.parent / entry["index"]
            index = ClipIndex(location, entry.get("rerank_factor", RERANK_FACTOR))
        except ClipflowError as error:
            raise ClipflowError(f"{path}: index {name!r}: {error}") from None
        for modality in MODALITIES:
            index.index(modality)  # fail at start, not at the first query
        if entry.get("search_params"):
            try:
                index.set_search_params(entry["search_params"])
            except ClipflowError as error:
                raise ClipflowError(f"{path}: index {name!r}: {error}") from None
        manifest = index.model_manifest.read_bytes()
        if manifest not in encoders:
            encoders[manifest] = Encoder(index.model_manifest, limits, decoder)
        dim = encoders[manifest].dim
        served[name] = ServedIndex(
            name,
            index,
            encoders[manifest],
            _shard_reader(path.parent, entry.get("shards")),
            (
                _rating_embeddings(path.parent / entry["aesthetic_embeddings"], dim)
                if entry.get("aesthetic_embeddings")
                else None
            ),
            _safety_model(path.parent / entry["safety_model"], dim) if entry.get("safety_model") else None,
            _takedowns(name, entry.get("blocklist"), path, index),
        )
    return served


def _takedowns(name: str, entries, indices_json: Path, index: ClipIndex) -> Takedowns | None:
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ClipflowError(f'{indices_json}: index {name!r}: "blocklist" is a list of files')
    try:
        return Takedowns(name, entries, indices_json.parent, index)
    except ClipflowError as error:
        raise ClipflowError(f"{indices_json}: index {name!r}: {error}") from None


def _rating_embeddings(folder: Path, dim: int) -> np.ndarray:
    """clip-retrieval's aesthetic embeddings: rating{k}.npy, one embedding each, for k = 0 .. 9."""
    rows = []
    for rating in RATINGS:
        file = folder / f"rating{rating}.npy"
        try:
            vector = np.load(file).astype(np.float32).reshape(-1)
        except (OSError, ValueError) as error:
            raise ClipflowError(f"{file}: cannot read this aesthetic embedding: {error}") from None
        if vector.shape != (dim,):
            raise ClipflowError(f"{file}: {vector.size} values; the index's embeddings have {dim}")
        rows.append(vector)
    return np.stack(rows)


def _safety_model(file: Path, dim: int) -> Head:
    head = load_head(file, SAFETY)
    if head.input_width != dim:
        raise ClipflowError(f"{file}: the safety model reads {head.input_width}-d embeddings; the index's are {dim}-d")
    return head


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


def _shard_reader(folder: Path, shards: str | None) -> ShardReader | None:
    """The reader of an index's shards: a folder relative to indices.json, or a URL on object storage."""
    if not shards:
        return None
    return StoredShardReader(shards) if storage.is_url(shards) else ShardReader(folder / shards)
