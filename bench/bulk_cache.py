"""What a job that reads the whole pool's embeddings (curate_pool, the filters, the index's stored vectors)
fetches and holds locally with them on S3 (storage.bulk, a moto server on loopback): it reads them through its
job's cache (clipflow.bulk.Cache) of `storage.cache_gb`, in pool order as the pool's row groups ask for them.

For each shard count, uploads that many shards' image embeddings (fp16, `--rows` x `--dim` each, as an embedding
job writes them) and writes their chunk record; then, for each cache size, reads every row in row groups of
`--group` rows as curate_pool does, and prints the files and bytes fetched, the most the cache held, the time and
rate, and what the same job fetches and holds at 1.28B rows (datacomp_large: 128,000 shards of 10,000 rows).

    .venv/bin/python bench/bulk_cache.py --shards 16 64 --cache-gb 0.05 1
"""

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from clipflow.bulk import job_cache
from clipflow.index.vectors import StoredVectors
from object_storage import POOL, moto_server

BUCKET = "bench-cache"


def upload_shards(fs, shards: int, rows: int, dim: int, results: Path) -> tuple[Path, list[Path]]:
    """`shards` image embedding files on S3 and a chunk record naming them; returns the record and the files'
    local paths (where a job would find them without bulk storage)."""
    url = f"s3://{BUCKET}/{shards}/embeddings"
    rng = np.random.default_rng(shards)
    names = [f"image/{shard:08d}.npy" for shard in range(shards)]
    sizes = {}
    for name in names:
        buffer = io.BytesIO()
        np.save(buffer, rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16))
        fs.pipe(f"{url.removeprefix('s3://')}/{name}", buffer.getvalue())
        sizes[name] = buffer.getbuffer().nbytes
    folder = results / str(shards) / "embeddings"
    (folder / "info").mkdir(parents=True)
    record = folder / "info/00000000.json"
    record.write_text(json.dumps({"shards": [f"{s:08d}" for s in range(shards)], "file_sizes": sizes, "bulk": url}))
    return record, [folder / name for name in names]


def read_pool(record: Path, paths: list[Path], cache_gb: float, group: int) -> tuple[float, object]:
    started = time.perf_counter()
    with job_cache([record], {"storage": {"cache_gb": cache_gb}}) as cache:
        stored = StoredVectors.of(paths, cache)
        for start in range(0, len(stored), group):
            stored.between(start, start + group).sum()  # a pool row group's embeddings, as a filter scores them
    return time.perf_counter() - started, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rows", type=int, default=10_000, help="rows a shard")
    parser.add_argument("--dim", type=int, default=768, help="ViT-L-14's embeddings, datacomp_large's model")
    parser.add_argument("--group", type=int, default=65_536, help="rows a pool row group")
    parser.add_argument("--cache-gb", type=float, nargs="+", default=[0.05, 1.0])
    args = parser.parse_args()
    server, endpoint = moto_server()
    scratch = tempfile.TemporaryDirectory()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint, TMPDIR=scratch.name,
    )  # fmt: skip
    tempfile.tempdir = None  # the caches go under the scratch folder
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    print(
        f"{'shards':>6} {'rows':>10} {'cache GB':>8} {'files':>6} {'fetched MB':>10} {'held MB':>8} {'seconds':>8} "
        f"{'MB/s':>6} {'fetched at 1.28B':>16} {'held at 1.28B':>13}"
    )
    try:
        for shards in args.shards:
            record, paths = upload_shards(fs, shards, args.rows, args.dim, Path(scratch.name) / "results")
            for cache_gb in args.cache_gb:
                seconds, cache = read_pool(record, paths, cache_gb, args.group)
                rows = shards * args.rows
                at_scale = cache.fetched / rows * POOL
                held = min(max(cache.budget, cache.peak), at_scale)  # the budget bounds it, not the pool
                print(
                    f"{shards:>6} {rows:>10,} {cache_gb:>8.2f} {cache.files:>6} {cache.fetched / 1e6:>10.1f} "
                    f"{cache.peak / 1e6:>8.1f} {seconds:>8.2f} {cache.fetched / 1e6 / seconds:>6.0f} "
                    f"{at_scale / 1e12:>13.2f} TB {held / 1e9:>10.2f} GB",
                    flush=True,
                )
                assert not list(Path(scratch.name).glob("clipflow-cache-*")), "a cache folder outlived its job"
    finally:
        server.terminate()
        scratch.cleanup()


if __name__ == "__main__":
    main()
