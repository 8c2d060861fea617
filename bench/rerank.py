"""Exact re-ranking: recall@10 and one-query latency of the workflow's approximate index with and without it.

    .venv/bin/python bench/rerank.py [--sizes 1000000] [--factors 1 4 10] [--queries 500]

For each size and data set, the vectors are written as the workflow stores embeddings (fp16, one file per shard of
100,000), indexed as build_index does above index.exact_below (autofaiss within the default budgets), and searched
through ClipIndex, one query at a time on one thread, k = 10, rerank_factor 1 (the index's own order) and others.
Recall@10 is against exact search over the same fp16 vectors.

Data sets (512-d, unit length):
  isotropic  independent Gaussian directions: no structure, the hardest case for any index.
  clustered  CLIP-like: 4,096 concepts of Zipf-distributed sizes (the largest ~700 times the smallest), each row
             its concept's direction plus a shared mean direction and Gaussian noise, so that rows of a concept have
             cosine ~0.65 with each other and ~0.25 with other concepts (LAION ViT-B-32 image embeddings: ~0.2-0.3
             between unrelated images, 0.6-0.8 within a concept).
"""

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from clipflow.config import load_config, output_settings
from clipflow.index.builder import build_index
from clipflow.index.folder import ClipIndex, write_metadata
from clipflow.index.vectors import write_manifest

DIM, K, PER_FILE = 512, 10, 100_000


def normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def isotropic(count: int, rng) -> np.ndarray:
    return normalized(rng.standard_normal((count, DIM), dtype=np.float32))


def clustered(count: int, rng, concepts: int = 4096) -> np.ndarray:
    sizes = 1.0 / np.arange(1, concepts + 1) ** 0.8
    labels = rng.choice(concepts, count, p=sizes / sizes.sum())
    mean = normalized(rng.standard_normal((1, DIM), dtype=np.float32))
    centers = normalized(rng.standard_normal((concepts, DIM), dtype=np.float32))
    out = np.empty((count, DIM), dtype=np.float32)
    for start in range(0, count, PER_FILE):
        part = labels[start : start + PER_FILE]
        noise = rng.standard_normal((len(part), DIM), dtype=np.float32) * 0.028
        out[start : start + PER_FILE] = normalized(0.6 * mean + centers[part] + noise)
    return out


def index_folder(vectors: np.ndarray, root: Path, options: dict) -> tuple[Path, dict, float]:
    folder, paths, parquets = root / "index", [], []
    folder.mkdir()
    for number, start in enumerate(range(0, len(vectors), PER_FILE)):
        paths.append(root / f"{number:08d}.npy")
        np.save(paths[-1], vectors[start : start + PER_FILE].astype(np.float16))
        parquets.append(root / f"{number:08d}.parquet")
        pd.DataFrame({"uid": np.arange(start, min(start + PER_FILE, len(vectors))).astype(str)}).to_parquet(
            parquets[-1]
        )
    (folder / "model.json").write_text("{}")
    write_metadata(parquets, folder / "metadata.arrow", folder / "model.json")
    write_manifest(paths, folder, folder / "image.vectors.json")
    started = time.perf_counter()
    infos = build_index(paths, folder / "image.index", folder / "image.infos.json", options)
    return folder, infos, time.perf_counter() - started


def measure(index: ClipIndex, queries: np.ndarray, truth: np.ndarray) -> dict:
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query[None], "image", K)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
    return {"p50": np.percentile(latencies, 50), "p99": np.percentile(latencies, 99), "recall": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--config", default="config/config.yaml")
    args = parser.parse_args()
    options = output_settings(load_config(args.config), "index")
    print(
        f"{'vectors':>10} {'data':<10} {'index':<28} {'build s':>8} {'factor':>6} {'recall@10':>9} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for size in args.sizes:
        for name, make in (("isotropic", isotropic), ("clustered", clustered)):
            rng = np.random.default_rng(size)
            vectors = make(size, rng).astype(np.float16).astype(np.float32)  # what the index stores
            queries = normalized(vectors[rng.integers(0, size, args.queries)] + 0.02 * isotropic(args.queries, rng))
            exact = faiss.IndexFlatIP(DIM)
            exact.add(vectors)
            _, truth = exact.search(queries, K)
            del exact
            with tempfile.TemporaryDirectory() as tmp:
                folder, infos, build = index_folder(vectors, Path(tmp), options)
                faiss.omp_set_num_threads(1)
                for factor in args.factors:
                    figures = measure(ClipIndex(folder, factor), queries, truth)
                    print(
                        f"{size:>10,} {name:<10} {infos['index_key'][:28]:<28} {build:>8.1f} {factor:>6} "
                        f"{figures['recall']:>9.3f} {figures['p50']:>7.2f} {figures['p99']:>7.2f}",
                        flush=True,
                    )
                faiss.omp_set_num_threads(2)


if __name__ == "__main__":
    main()
