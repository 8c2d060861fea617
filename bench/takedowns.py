"""Taking rows down (config `blocklist`) from a finished index against rebuilding it without them.

    .venv/bin/python bench/takedowns.py --rows 1000000 --fractions 0.0001 0.01

An index folder of `--rows` rows (512-d unit vectors, an IVF-Flat index of 1,024 lists as autofaiss makes at
this size, metadata with uid, url, shard and key as the workflow writes it), then for each fraction a blocklist
naming that fraction of its rows, half by uid and half by URL written otherwise (upper-case scheme, a default
port, a fragment). Prints, for the takedown: its time (index_takedowns' work: reading the blocklist, matching
every metadata row, writing takedowns.npy, rows.parquet and the audit), the bytes it writes, and one query's
latency (k = 10, one thread, after a warm-up pass) with the rows left out and, on the same index, without; for
the rebuild: the time to train and fill an index without them, and the bytes of its lists. The rebuild leaves
out the embedding, parts and merge that a rerun of the workflow would also redo.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from clipflow import files
from clipflow.index.folder import ClipIndex
from clipflow.index.takedowns import write_takedowns

DIM, LISTS, SHARD_ROWS = 512, 1024, 10_000


def index_folder(folder: Path, vectors: np.ndarray) -> faiss.Index:
    rows = len(vectors)
    numbers = np.arange(rows)
    metadata = pa.table(
        {
            "uid": [f"{n:032x}" for n in numbers],
            "url": [f"https://images.example.com/{n % 97}/photo-{n}.jpg" for n in numbers],
            "shard": [f"{n // SHARD_ROWS:08d}" for n in numbers],
            "key": [f"{n:012d}" for n in numbers],
        }
    )
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "metadata.arrow"), "wb") as sink, pa.ipc.new_file(sink, metadata.schema) as writer:
        writer.write_table(metadata, max_chunksize=100_000)
    (folder / "model.json").write_text("{}")
    record = {"rows": rows, **files.written_record([folder / "metadata.arrow", folder / "model.json"], folder)}
    files.write_json(folder / "metadata.infos.json", record)
    index = trained(vectors)
    for modality in ("image", "text"):
        faiss.write_index(index, str(folder / f"{modality}.index"))
    return index


def trained(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, min(LISTS, len(vectors) // 39), faiss.METRIC_INNER_PRODUCT)
    index.train(vectors[:: max(1, len(vectors) // (64 * index.nlist))])
    index.add(vectors)
    index.nprobe = 16
    return index


def blocklist(folder: Path, rows: int, fraction: float, rng) -> tuple[list, np.ndarray]:
    chosen = np.sort(rng.choice(rows, max(2, int(rows * fraction)), replace=False))
    by_uid, by_url = chosen[::2], chosen[1::2]
    lines = ["uid,url"] + [f"{n:032x}," for n in by_uid]
    lines += [f",HTTPS://images.example.com:443/{n % 97}/photo-{n}.jpg#top" for n in by_url]
    path = folder / f"blocklist-{fraction}.csv"
    path.write_text("\n".join(lines) + "\n")
    return [str(path)], chosen


def latency_ms(index: ClipIndex, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for query in queries:
        index.search(query, "image", 10)
    return (time.perf_counter() - started) / len(queries) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0001, 0.01])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, args.rows, args.queries)]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        folder = work / "index"
        index_folder(folder, vectors)
        print(f"{args.rows:,} rows")
        print(
            f"{'fraction':>8} {'rows down':>9} {'takedown s':>10} {'written MB':>10} {'query ms':>8} {'without':>7} "
            f"{'rebuild s':>9} {'rebuild MB':>10}"
        )
        for fraction in args.fractions:
            entries, chosen = blocklist(work, args.rows, fraction, rng)
            started = time.perf_counter()
            down = write_takedowns(entries, folder, [], work / "rows.parquet", work / "audit.json")
            seconds = time.perf_counter() - started
            assert down == len(chosen) and np.array_equal(np.load(folder / "takedowns.npy"), chosen)
            written = sum(
                (p.stat().st_size for p in (folder / "takedowns.npy", work / "rows.parquet", work / "audit.json"))
            )
            index = ClipIndex(folder, rerank_factor=1)
            latency_ms(index, queries)  # a first pass brings the index's pages in
            query = latency_ms(index, queries)
            index.taken_down = np.empty(0, np.int64)  # the same index, nothing left out: the cost, side by side
            base = latency_ms(index, queries)
            kept = np.setdiff1d(np.arange(args.rows), chosen)
            started = time.perf_counter()
            rebuilt = trained(vectors[kept])
            rebuild = time.perf_counter() - started
            faiss.write_index(rebuilt, str(work / "rebuilt.index"))
            rebuilt_mb = (work / "rebuilt.index").stat().st_size / 1e6
            print(
                f"{fraction:>8.4%} {down:>9,} {seconds:>10.2f} {written / 1e6:>10.3f} {query:>8.2f} {base:>7.2f} "
                f"{rebuild:>9.1f} {rebuilt_mb:>10.0f}",
                flush=True,
            )
        print(json.dumps(json.loads((work / "audit.json").read_text())["index"]))


if __name__ == "__main__":
    main()
