"""The index as jobs, as faiss builds large collections: one job trains an empty index on a sample of the pool, one
job per embedding chunk adds the chunk's vectors to a copy of it (a part), and one job merges the parts' inverted
lists into one file that searches memory-map (faiss's on-disk inverted lists) and tunes the search. No job holds
the pool: training holds its sample, adding holds one chunk's part, merging one part at a time.

Index id i is row i of the pool in chunk order (row i of metadata.arrow): each part numbers its rows from 0 and the
merge shifts them by the rows of the parts before it. The plan only appends shards, so new input files add parts
at the end, and earlier rows keep their ids.

What is trained, from the planned pool's size (`trained_rows`): an exact index below `exact_below` rows (kind auto)
or always (kind flat), IVF1,Flat: one list, scanned whole. Otherwise autofaiss's memory-mappable choice for the
rows trained for, within the memory budget. That training is kept while the pool grows, until it reaches
`retrain_growth` times those rows: then the index is trained again and every part is added again.
"""

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from clipflow import files
from clipflow.bulk import Cache
from clipflow.errors import ClipflowError
from clipflow.index.vectors import RERANK_FACTOR, StoredVectors, row_counts

log = logging.getLogger(__name__)

EXACT_KEY = "IVF1,Flat"  # one list scanned whole: exact inner products, stored like every other index
SAMPLE_SEED = 0
ADD_BLOCK = 65_536  # rows converted to float32 at a time while adding
P99_QUERIES = 1000  # stored vectors searched one at a time to measure the tuned p99
TUNING_K = 10 * RERANK_FACTOR  # a tuning query's results: the query CLI's k 10, re-ranked (autofaiss's 40 too)


def vector_count(paths) -> int:
    return sum(row_counts(paths))


def _exact_for(pool_rows: int, options: dict) -> bool:
    return options["kind"] == "flat" or (options["kind"] == "auto" and pool_rows < options["exact_below"])


def trained_rows(pool_rows: int, options: dict) -> int:
    """The rows an index over `pool_rows` planned rows is trained for (0: exact, nothing to train). Under
    exact_below the whole pool; above, exact_below x retrain_growth^k, the largest such not above the pool: a
    training stays while the pool grows, until it is retrain_growth times the rows trained for."""
    if _exact_for(pool_rows, options):
        return 0
    base, growth = options["exact_below"], options["retrain_growth"]
    if pool_rows < base:
        return pool_rows
    rows = base
    while rows * growth <= pool_rows:
        rows *= growth
    return int(rows)


def training_chunks(chunk_rows: dict[str, int], rows: int) -> list[str]:
    """The first chunks (in pool order) that hold `rows` planned rows; the first chunk alone when nothing trains."""
    chosen, total = [], 0
    for chunk, count in chunk_rows.items():
        chosen.append(chunk)
        total += count
        if total >= rows:
            break
    return chosen


def index_key(rows: int, dim: int, options: dict) -> str:
    if rows == 0:
        return EXACT_KEY
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    keys = get_optimal_index_keys_v2(rows, dim, options["max_index_memory_usage"], should_be_memory_mappable=True)
    return keys[0]


def train_index(
    paths: list, rows: int, options: dict, index_path: Path | str, infos_path: Path | str, cache: Cache | None = None
) -> dict:
    """An empty index for `rows` trained rows, trained on a seeded sample of the vectors in `paths` (those on bulk
    storage read through `cache`)."""
    from autofaiss.external.optimize import get_optimal_train_size
    from autofaiss.indices.index_factory import index_factory

    started = time.perf_counter()
    stored = StoredVectors.of(paths, cache)
    if len(stored) == 0:
        raise ClipflowError(f"{len(paths)} embedding files hold no vectors to train the index: every download failed?")
    dim = int(stored.between(0, 1).shape[1])
    key = index_key(rows, dim, options)
    index = index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    size = min(len(stored), options["max_train_vectors"], get_optimal_train_size(len(stored), key, None, dim))
    sample = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(stored), size, replace=False))
    index.train(stored.take(sample))
    with files.replacing(index_path) as tmp:
        faiss.write_index(index, str(tmp))
    infos = {
        "index_key": key,
        "exact": key == EXACT_KEY,
        "trained_rows": rows,
        "train_vectors": size,
        "train_seconds": time.perf_counter() - started,
        **files.written_record([index_path], Path(index_path).parent),
    }
    files.write_json(infos_path, infos)
    log.info("trained %s for %d rows on %d of %d vectors", key, rows, size, len(stored))
    return infos


def part_record(part_path: Path | str) -> Path:
    """The record beside a part: its vector count, size and sha256."""
    return Path(part_path).with_suffix(".json")


def add_part(trained_path: Path | str, paths: list, part_path: Path | str, cache: Cache | None = None) -> int:
    """A copy of the trained index holding the vectors of `paths` (those on bulk storage read through `cache`), ids
    from 0, and its record; returns how many."""
    index = faiss.read_index(str(trained_path))
    for path in paths:
        vectors = np.load(cache.local(path) if cache else path, mmap_mode="r")
        for start in range(0, len(vectors), ADD_BLOCK):
            index.add(np.ascontiguousarray(vectors[start : start + ADD_BLOCK], dtype=np.float32))
    # The merge takes the quantizer from the trained index: parts keep only their lists.
    faiss.extract_index_ivf(index).quantizer.reset()
    with files.replacing(part_path) as tmp:
        faiss.write_index(index, str(tmp))
    record = {"vectors": int(index.ntotal), **files.written_record([part_path], Path(part_path).parent)}
    files.write_json(part_record(part_path), record)
    return record["vectors"]


def ivfdata_path(index_path: Path | str) -> Path:
    """The inverted lists' file beside an index; the index names it, and is read with IO_FLAG_ONDISK_SAME_DIR."""
    return Path(index_path).with_suffix(".ivfdata")


def merge_parts(
    trained_path: Path | str, trained_infos_path, part_paths: list, index_path: Path | str, infos_path, options
) -> dict:
    """The parts' lists, in order, into the trained index's on-disk lists (ids shifted by the rows before each
    part), then the search parameters autofaiss tunes to `max_index_query_time_ms`."""
    started = time.perf_counter()
    for path in part_paths:  # a stat each, before anything is written
        _check_part(path)
    trained_infos = json.loads(Path(trained_infos_path).read_text())
    index_path, lists_path = Path(index_path), ivfdata_path(index_path)
    index = faiss.read_index(str(trained_path))
    ivf = faiss.extract_index_ivf(index)
    # Appending part by part grows lists by doubling; a second pass writes them compact, list after list.
    growing_path = lists_path.with_suffix(".growing")
    growing = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(growing_path))
    total = 0
    for path in part_paths:
        part = faiss.read_index(str(path))
        growing.merge_from(faiss.extract_index_ivf(part).invlists, total)
        total += part.ntotal
    if total == 0:
        raise ClipflowError(f"no embeddings to index in {len(part_paths)} parts: every download or decode failed")
    compact = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    sources = faiss.InvertedListsPtrVector()
    sources.push_back(growing)
    compact.merge_from_multiple(sources.data(), 1, False)
    del sources, growing
    os.remove(growing_path)
    ivf.replace_invlists(compact, True)
    compact.this.disown()
    index.ntotal = ivf.ntotal = total
    without_read_ahead(index)  # tuned as ClipIndex searches it
    params, p99 = ("", None) if trained_infos["exact"] else _tuned_params(index, trained_infos["index_key"], options)
    with files.replacing(index_path) as tmp:
        faiss.write_index(index, str(tmp))
    written = [index_path, lists_path]
    infos = {
        **trained_infos,
        "index_param": params,
        "tuned_p99_ms": p99,
        "size": total,
        "parts": len(part_paths),
        "merge_seconds": time.perf_counter() - started,
        # what the start of a run (sizes), ClipIndex (sizes) and clipflow verify (checksums) check them against
        **files.written_record(written, index_path.parent),
    }
    files.write_json(infos_path, infos)
    log.info(
        "merged %d parts, %d vectors, into %s (%s %s)", len(part_paths), total, index_path, infos["index_key"], params
    )
    return infos


def _check_part(path: Path | str) -> None:
    """A part against the size its record gives (a part written before records has none: faiss reads it whole)."""
    record = part_record(path)
    damage = files.record_damage(json.loads(record.read_text()), record.parent) if record.exists() else []
    if damage:
        raise ClipflowError(f"damaged index part: {'; '.join(damage)}; the next workflow run adds it again")


def without_read_ahead(index: faiss.Index) -> None:
    """Searches of an index with on-disk lists without faiss's read-ahead: it starts up to 32 threads on every
    search to read the probed lists, which for one query at a time took 3x the search itself. The lists are
    memory-mapped: the page cache reads them."""
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if isinstance(lists, faiss.OnDiskInvertedLists):
        lists.prefetch_nthread = 0


def _tuned_params(index: faiss.Index, key: str, options: dict) -> tuple[str, float]:
    """autofaiss's search parameters for a mean query time of `max_index_query_time_ms`, with nprobe then lowered
    until one query in a hundred fits that budget too: a mean at the budget leaves the slowest queries above it."""
    from autofaiss.external.optimize import get_optimal_hyperparameters

    budget = options["max_index_query_time_ms"]
    params = get_optimal_hyperparameters(index, key, max_speed_ms=budget)
    log.info("autofaiss tuned %s to %s for a mean of %s ms", key, params, budget)
    queries = index.reconstruct_n(0, min(index.ntotal, P99_QUERIES))

    def p99_ms(nprobe: int) -> float:
        faiss.ParameterSpace().set_index_parameters(index, with_nprobe(params, nprobe))
        return one_query_p99_ms(index, queries)

    nprobe, p99 = fitted_nprobe(int(re.search(r"nprobe=(\d+)", params)[1]), p99_ms, budget)
    params = with_nprobe(params, nprobe)
    faiss.ParameterSpace().set_index_parameters(index, params)
    return params, p99


def with_nprobe(params: str, nprobe: int) -> str:
    """autofaiss's parameters with another nprobe; an HNSW quantizer's efSearch stays twice nprobe, as it sets it."""
    params = re.sub(r"nprobe=\d+", f"nprobe={nprobe}", params)
    return re.sub(r"efSearch=\d+", f"efSearch={2 * nprobe}", params)


def one_query_p99_ms(index: faiss.Index, queries: np.ndarray) -> float:
    """The 99th percentile of one query's search time, one thread, `TUNING_K` results."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as the service searches
    latencies = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], TUNING_K)
        latencies.append(time.perf_counter() - started)
    faiss.omp_set_num_threads(threads)
    return float(np.percentile(latencies, 99) * 1000)


def fitted_nprobe(nprobe: int, p99_ms, budget_ms: float) -> tuple[int, float]:
    """The nprobe, lowered from `nprobe` until `p99_ms(nprobe)` fits the budget (1 at least), and its p99: each
    step in proportion to the overshoot, with a margin, since a query's time grows about linearly with the lists
    probed."""
    while True:
        p99 = p99_ms(nprobe)
        if p99 <= budget_ms or nprobe == 1:
            return nprobe, p99
        nprobe = max(1, min(nprobe - 1, int(nprobe * 0.95 * budget_ms / p99)))


def build_index(paths: list, index_path: Path | str, infos_path: Path | str, options: dict) -> dict:
    """Train, add and merge in one process, a part per file of `paths`: an index folder for tests and benchmarks
    equal to what the jobs write."""
    index_path = Path(index_path)
    work = index_path.parent / f".{index_path.stem}-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    trained, trained_infos = work / "trained.index", work / "trained.json"
    train_index(paths, trained_rows(vector_count(paths), options), options, trained, trained_infos)
    parts = [work / f"{number}.index" for number in range(len(paths))]
    for path, part in zip(paths, parts):
        add_part(trained, [path], part)
    infos = merge_parts(trained, trained_infos, parts, index_path, infos_path, options)
    shutil.rmtree(work)
    return infos
