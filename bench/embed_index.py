"""Embedding throughput on the demo shards, and index build/query/recall ours vs autofaiss's defaults.

    .venv/bin/snakemake --cores all          # makes the demo shards first
    .venv/bin/python bench/embed_index.py [--sizes 10000 100000 1000000] [--model ViT-B-32]

Index part: random unit 512-d vectors; queries are stored vectors plus noise, so each has real
neighbours; recall@10 is measured against exact brute force; latency is one query at a time.
"""

import argparse
import glob
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from clipflow.config import load_config, output_settings
from clipflow.embed.embedder import embed_chunk
from clipflow.index.builder import build_index
from clipflow.embed.model import fetch_model


def embedding_figures(model: str, shards: list[str], options: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch_model(model, "none", None, str(tmp), tmp / "m.json")
        started = time.perf_counter()
        info = embed_chunk(
            shards,
            tmp / "m.json",
            tmp / "embeddings",
            tmp / "embeddings/info/chunk.json",
            [],
            options["precision"],
            options["device"],
            options["batch_size"],
            options["workers"],
        )
        wall = time.perf_counter() - started
    return {
        "samples": info["embedded"],
        "steady_samples_per_s": info["samples_per_second"],
        "wall_s": wall,
        "model_load_s": info["seconds"]["model_load"],
    }


def unit_vectors(count: int, dim: int, rng) -> np.ndarray:
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def measure(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> dict:
    latencies = []
    found = []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query[None], 10)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "recall@10": float(recall),
    }


def index_figures(size: int, options: dict, queries_count: int) -> list[dict]:
    rng = np.random.default_rng(size)
    vectors = unit_vectors(size, 512, rng)
    picks = rng.integers(0, size, queries_count)
    queries = vectors[picks] + 0.2 * unit_vectors(queries_count, 512, rng)  # a near neighbour of a stored vector
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(512)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "vectors.npy", vectors.astype(np.float16))
        del exact
        started = time.perf_counter()
        infos = build_index([tmp / "vectors.npy"], tmp / "ours.index", tmp / "ours.json", options)
        ours_build = time.perf_counter() - started
        ours = faiss.read_index(str(tmp / "ours.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
        rows.append(
            {
                "size": size,
                "who": "clipflow",
                "index": infos["index_key"],
                "build_s": ours_build,
                **measure(ours, queries, truth),
            }
        )
        del ours

        from autofaiss import build_index as autofaiss_build_index

        started = time.perf_counter()
        theirs, their_infos = autofaiss_build_index(embeddings=vectors, save_on_disk=False, verbose=40)
        theirs_build = time.perf_counter() - started
        rows.append(
            {
                "size": size,
                "who": "autofaiss defaults",
                "index": their_infos["index_key"],
                "build_s": theirs_build,
                **measure(theirs, queries, truth),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--config", default="config/config.yaml")
    args = parser.parse_args()
    config = load_config(args.config)

    shards = sorted(glob.glob("results/shards/*.tar"))
    if shards:
        embed = embedding_figures(args.model, shards, config["embed"])
        print(
            f"embedding, {args.model} image+text on {faiss.omp_get_max_threads()} CPU threads, {len(shards)} demo shards:"
        )
        print(
            f"  {embed['samples']} samples, {embed['steady_samples_per_s']:.1f} samples/s steady, "
            f"{embed['samples'] / embed['wall_s']:.1f} samples/s with model load ({embed['model_load_s']:.1f} s)"
        )
    else:
        print("no demo shards in results/shards: run the workflow first for the embedding figures")

    print(f"\n{'vectors':>9}  {'who':<19} {'index':<34} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'recall@10':>9}")
    for size in args.sizes:
        for row in index_figures(size, output_settings(config, "index"), args.queries):
            print(
                f"{row['size']:>9,}  {row['who']:<19} {row['index'][:34]:<34} {row['build_s']:>8.1f} "
                f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['recall@10']:>9.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
