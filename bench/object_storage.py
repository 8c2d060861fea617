"""An index folder on S3 (a moto server on loopback) against the same folder on local disk: the first open (the
index files copied into the local cache and checked), a later open (the cache reused), one-query latency with exact
re-ranking (its stored rows fetched by ranged reads) and `clipflow verify`'s check of every record.

    .venv/bin/python bench/object_storage.py [--sizes 1000000] [--queries 200] [--factor 4]

The folder is bench/rerank.py's (clustered 512-d vectors, fp16 files of 100,000 rows, the workflow's index
settings). What the cache holds per row, times 1.28B, is what a serving machine keeps locally at DataComp-large.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import faiss
import numpy as np

from clipflow import storage
from clipflow.config import load_config, output_settings
from clipflow.index.folder import ClipIndex
from rerank import clustered, index_folder, normalized

BUCKET, POOL = "bench", 1_280_000_000


def moto_server(log=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """A moto server on loopback; it logs a line per request to `log`."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    raise SystemExit("moto did not start")


def timed(step) -> tuple[float, object]:
    started = time.perf_counter()
    result = step()
    return time.perf_counter() - started, result


def opened(location, factor: int) -> ClipIndex:
    index = ClipIndex(location, factor)
    index.index("image")
    return index


def verified(url: str) -> list:
    """What `clipflow verify URL` does: one listing, then every record's files' sha256s."""
    present = storage.listing(url)
    return [storage.record_damage_at(url, present, name) for name in storage.index_record_names(present)]


def latencies(index: ClipIndex, queries: np.ndarray) -> tuple[float, float]:
    spent = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], "image", 10)
        spent.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(spent, 50)), float(np.percentile(spent, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factor", type=int, default=4, help="rerank_factor")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "config/config.yaml"))
    args = parser.parse_args()
    options = output_settings(load_config(args.config), "index")
    server, endpoint = moto_server()
    scratch = tempfile.TemporaryDirectory()
    work = Path(scratch.name)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        CLIPFLOW_CACHE=str(work / "cache"),
    )
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    print(
        f"{'vectors':>10} {'where':<6} {'cached MB':>9} {'1st open s':>10} {'open s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'verify s':>8} {'cache at 1.28B':>14}"
    )
    try:
        faiss.omp_set_num_threads(1)
        for size in args.sizes:
            rng = np.random.default_rng(size)
            vectors = clustered(size, rng).astype(np.float16).astype(np.float32)
            queries = normalized(vectors[rng.integers(0, size, args.queries)])
            root = work / str(size)
            root.mkdir()
            folder, _, _ = index_folder(vectors, root, options)
            fs.put(str(root), f"{BUCKET}/{size}", recursive=True)
            url = f"s3://{BUCKET}/{size}/index"
            for where, location in (("local", folder), ("s3", url)):
                first, _ = timed(lambda: opened(location, args.factor))
                again, index = timed(lambda: opened(location, args.factor))
                p50, p99 = latencies(index, queries)
                if where == "s3":
                    verify, _ = timed(lambda: verified(url))
                    cached = sum(path.stat().st_size for path in (work / "cache").rglob("*") if path.is_file())
                else:
                    verify, cached = float("nan"), 0
                at_scale = f"{cached / size * POOL / 1e12:.2f} TB" if cached else "-"
                print(
                    f"{size:>10,} {where:<6} {cached / 1e6:>9.1f} {first:>10.2f} {again:>7.2f} {p50:>7.2f} "
                    f"{p99:>7.2f} {verify:>8.2f} {at_scale:>14}",
                    flush=True,
                )
    finally:
        server.terminate()
        scratch.cleanup()


if __name__ == "__main__":
    main()
