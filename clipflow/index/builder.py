"""Build a faiss index over one modality's embeddings; index id i is row i of the chunks in order.

Small collections get an exact inner-product index (faiss IndexFlatIP): at 20k vectors autofaiss
spends ~33 s tuning an HNSW index that a flat scan beats. Above `exact_below` vectors autofaiss picks
an approximate index within the configured memory and query-time budgets.
"""

import json
import logging
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from clipflow import files
from clipflow.errors import ClipflowError
from clipflow.index.vectors import row_counts

log = logging.getLogger(__name__)


def vector_count(paths) -> int:
    return sum(row_counts(paths))


def _exact_index(paths) -> faiss.Index:
    first = np.load(paths[0], mmap_mode="r")
    index = faiss.IndexFlatIP(first.shape[1])
    for path in paths:
        index.add(np.ascontiguousarray(np.load(path), dtype=np.float32))
    return index


def _autofaiss_index(paths, index_path: Path, infos_path: Path, options: dict, memory_available: str) -> None:
    from autofaiss import build_index

    # autofaiss reads a folder of .npy files in name order: link the chunks there, in index order.
    staging = index_path.parent / f".{index_path.stem}-inputs"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for position, path in enumerate(paths):
        (staging / f"{position:08d}.npy").symlink_to(Path(path).resolve())
    build_index(
        embeddings=str(staging),
        index_path=str(index_path),
        index_infos_path=str(infos_path),
        metric_type=options["metric"],
        max_index_memory_usage=options["max_index_memory_usage"],
        current_memory_available=memory_available,
        max_index_query_time_ms=options["max_index_query_time_ms"],
        should_be_memory_mappable=options["memory_mappable"],
        verbose=logging.WARNING,
    )
    shutil.rmtree(staging)
    if not index_path.exists() or not infos_path.exists():  # autofaiss logs why and returns (e.g. budgets)
        raise ClipflowError(
            f"autofaiss built no index for {index_path.name}: see its error above; index.mem_mb (its "
            f"current_memory_available, {memory_available}) must exceed index.max_index_memory_usage "
            f"({options['max_index_memory_usage']})"
        )


def build_index(
    paths: list, index_path: Path | str, infos_path: Path | str, options: dict, memory_available: str = "4G"
) -> dict:
    """Index the embeddings in `paths` (in order) into `index_path`; writes and returns the index infos.
    `options` choose the index; `memory_available` (autofaiss's current_memory_available) only sizes the build."""
    index_path, infos_path = Path(index_path), Path(infos_path)
    started = time.perf_counter()
    count = vector_count(paths)
    exact = options["kind"] == "flat" or (options["kind"] == "auto" and count < options["exact_below"])
    if count == 0:
        raise ValueError("no embeddings to index: every download or decode failed")
    with files.replacing(index_path) as tmp_index:
        if exact:
            faiss.write_index(_exact_index(paths), str(tmp_index))
            infos = {"index_key": "Flat", "metric_type": "ip", "exact": True}
        else:
            _autofaiss_index(paths, tmp_index, infos_path, options, memory_available)
            infos = {**json.loads(infos_path.read_text()), "exact": False}
    infos.update(size=count, build_seconds=time.perf_counter() - started)
    files.write_json(infos_path, infos)
    log.info("indexed %d vectors into %s (%s) in %.1f s", count, index_path, infos["index_key"], infos["build_seconds"])
    return infos
