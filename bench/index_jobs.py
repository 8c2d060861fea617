"""The index as jobs (train, add per chunk, merge) against autofaiss's single job, on synthetic CLIP-like vectors.

    python bench/index_jobs.py --sizes 1000000 [--sets isotropic clustered] [--shards-per-chunk 16]
        [--skip-autofaiss | --autofaiss-key own|jobs]

For each size and data set, 512-d unit vectors are written as the workflow stores embeddings (fp16, one file per
shard of 10,000) a shard at a time, so no step of the benchmark itself holds the set. Then, each in a fresh process
so that its peak memory is its own: the train job (on the first chunks that hold the rows it is trained for, as the
workflow picks them), one add job per chunk of shards, the merge job, and autofaiss's build_index over the same
files (its defaults, metric ip, the workflow's budgets; with --autofaiss-key jobs, the key the jobs built). Each
job's peak RSS counts the pages of files it maps; its peak anonymous memory (sampled) is what it holds itself.
Both indices are searched through ClipIndex, one query at a time on one thread, k = 10, with re-ranking factor 1
(the index's own order) and 4 (the default); recall@10 is against exact search over the stored fp16 vectors.
Queries are stored rows plus a little noise. A first pass of other queries, at the largest factor, meets whatever
of the lists and embeddings the page cache and the index's memory maps lack (reported as "first (cold)"); the
passes after it, through the same ClipIndex, are warm.

Data sets (see bench/rerank.py): isotropic, independent Gaussian directions; clustered, 4,096 concepts of Zipf
sizes around a shared mean direction (cosine ~0.65 within a concept, ~0.25 between).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from rerank import DIM, K, measure as search_figures, normalized
from semantic_dedup import measure, print_jobs_table

from clipflow.config import load_config, output_settings
from clipflow.index import builder
from clipflow.index.folder import ClipIndex, write_metadata
from clipflow.index.vectors import write_manifest

SHARD_ROWS = 10_000
CONCEPTS = 4096


def write_set(folder: Path, kind: str, rows: int, seed: int) -> list[Path]:
    """fp16 shard files of `kind` vectors and their metadata, a shard at a time."""
    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, CONCEPTS + 1) ** 0.8
    mean = normalized(rng.standard_normal((1, DIM), dtype=np.float32))
    centres = normalized(rng.standard_normal((CONCEPTS, DIM), dtype=np.float32))
    paths = []
    for number, start in enumerate(range(0, rows, SHARD_ROWS)):
        count = min(SHARD_ROWS, rows - start)
        if kind == "isotropic":
            part = normalized(rng.standard_normal((count, DIM), dtype=np.float32))
        else:
            labels = rng.choice(CONCEPTS, count, p=sizes / sizes.sum())
            noise = rng.standard_normal((count, DIM), dtype=np.float32) * 0.028
            part = normalized(0.6 * mean + centres[labels] + noise)
        paths.append(folder / f"{number:08d}.npy")
        np.save(paths[-1], part.astype(np.float16))
        pd.DataFrame({"uid": np.arange(start, start + count).astype(str)}).to_parquet(folder / f"{number:08d}.parquet")
    return paths


def exact_top(paths: list[Path], queries: np.ndarray) -> np.ndarray:
    """The exact top-k ids of each query over the stored vectors, a shard at a time."""
    best_scores = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.full((len(queries), K), -1, np.int64)
    start = 0
    for path in paths:
        scores = queries @ np.load(path).astype(np.float32).T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores, ids = np.concatenate([best_scores, scores], 1), np.concatenate([best_ids, ids], 1)
        top = np.argsort(-scores, axis=1)[:, :K]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
        start += scores.shape[1] - K
    return best_ids


def sample_queries(paths: list[Path], count: int, rng) -> np.ndarray:
    picks = rng.choice(len(paths), count)
    rows = np.stack([np.load(paths[p], mmap_mode="r")[rng.integers(0, SHARD_ROWS)].astype(np.float32) for p in picks])
    return normalized(rows + 0.02 * normalized(rng.standard_normal(rows.shape, dtype=np.float32)))


def index_folder(folder: Path, data: Path, paths: list[Path]) -> None:
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    write_metadata(sorted(data.glob("*.parquet")), folder / "metadata.arrow", folder / "model.json")
    write_manifest(paths, folder, folder / "image.vectors.json")


def autofaiss_job(data: Path, index_path: Path, infos_path: Path, options: dict, index_key: str | None) -> None:
    from autofaiss import build_index

    build_index(
        embeddings=str(data),
        index_key=index_key,
        index_path=str(index_path),
        index_infos_path=str(infos_path),
        metric_type=options["metric"],
        max_index_memory_usage=options["max_index_memory_usage"],
        current_memory_available="20G",  # above max_index_memory_usage (16G), as autofaiss requires
        max_index_query_time_ms=options["max_index_query_time_ms"],
        should_be_memory_mappable=True,
        verbose=40,
    )


def jobs_build(paths, folder: Path, work: Path, options: dict, shards_per_chunk: int) -> dict:
    """The workflow's jobs, each in its own process: {kind: [(seconds, peak MB)]} and the merged infos."""
    chunks = [paths[i : i + shards_per_chunk] for i in range(0, len(paths), shards_per_chunk)]
    rows = builder.trained_rows(builder.vector_count(paths), options)
    chunk_rows = {str(n): builder.vector_count(chunk) for n, chunk in enumerate(chunks)}
    training = [path for n in builder.training_chunks(chunk_rows, rows) for path in chunks[int(n)]]
    trained, trained_infos = work / "trained.index", work / "trained.json"
    figures = {"train": [measure(builder.train_index, training, rows, options, trained, trained_infos)]}
    parts = [work / f"part{n}.index" for n in range(len(chunks))]
    figures["add"] = [measure(builder.add_part, trained, chunk, part) for chunk, part in zip(chunks, parts)]
    merge_args = (trained, trained_infos, parts, folder / "image.index", folder / "image.infos.json", options)
    figures["merge"] = [measure(builder.merge_parts, *merge_args)]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--sets", nargs="+", default=["isotropic", "clustered"])
    parser.add_argument("--shards-per-chunk", type=int, default=16)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--skip-autofaiss", action="store_true")
    parser.add_argument(
        "--autofaiss-key",
        choices=["own", "jobs"],
        default="own",
        help="autofaiss picks its own index key for all the vectors, or builds the jobs' key (like for like)",
    )
    parser.add_argument("--config", default="config/config.yaml")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each table line as it comes: a build may be stopped midway
    options = output_settings(load_config(args.config), "index")
    for size in args.sizes:
        for kind in args.sets:
            with tempfile.TemporaryDirectory() as name:
                root = Path(name)
                (root / "data").mkdir()
                (root / "work").mkdir()
                paths = write_set(root / "data", kind, size, seed=size)
                rng = np.random.default_rng(1)
                queries = sample_queries(paths, args.queries, rng)
                truth = exact_top(paths, queries)
                first_queries = sample_queries(paths, args.queries, rng)
                first_truth = exact_top(paths, first_queries)
                ours = root / "ours"
                index_folder(ours, root / "data", paths)
                figures = jobs_build(paths, ours, root / "work", options, args.shards_per_chunk)
                infos = json.loads((ours / "image.infos.json").read_text())
                print(f"\n{size:,} {kind} vectors, {len(paths)} shards, chunks of {args.shards_per_chunk} shards")
                print(f"jobs: {infos['index_key']} trained for {infos['trained_rows']:,} rows on "
                      f"{infos['train_vectors']:,}, search {infos['index_param']}")  # fmt: skip
                print_jobs_table(figures)
                folders = {"jobs": ours}
                if not args.skip_autofaiss:
                    theirs = root / "autofaiss"
                    index_folder(theirs, root / "data", paths)
                    key = infos["index_key"] if args.autofaiss_key == "jobs" else None
                    their_paths = (theirs / "image.index", theirs / "image.infos.json")
                    seconds, memory, anonymous = measure(autofaiss_job, root / "data", *their_paths, options, key)
                    their_infos = json.loads((theirs / "image.infos.json").read_text())
                    print(f"| autofaiss build_index (one job) | 1 | {seconds:.1f} | {seconds:.1f} | {memory:,.0f} | "
                          f"{anonymous:,.0f} |")  # fmt: skip
                    print(f"autofaiss: {their_infos['index_key']}, search {their_infos['index_param']}")
                    folders["autofaiss"] = theirs
                faiss.omp_set_num_threads(1)
                print("| index | pass | rerank factor | recall@10 | p50 ms | p99 ms |")
                print("|---|---|---|---|---|---|")
                for who, folder in folders.items():
                    index = ClipIndex(folder)  # one, as a service holds it: its maps stay set up between passes
                    passes = [("first (cold)", max(args.factors), first_queries, first_truth)]
                    passes += [("warm", factor, queries, truth) for factor in args.factors]
                    for name, factor, asked, expected in passes:
                        index.rerank_factor = factor
                        found = search_figures(index, asked, expected)
                        print(f"| {who} | {name} | {factor} | {found['recall']:.3f} | {found['p50']:.2f} | "
                              f"{found['p99']:.2f} |")  # fmt: skip
                faiss.omp_set_num_threads(2)


if __name__ == "__main__":
    main()
