"""Download throughput of clipflow's download job against plain img2dataset, side by side on the same URLs.

Serves `--images` distinct JPEGs from a directory with Python's threaded HTTP server on 127.0.0.1 (its own
process), writes `--shards` x `--per-shard` rows pointing at them, then downloads them
  1. with `img2dataset.download()` as its users call it (`--processes` processes, `--threads` threads, our
     default image settings), and
  2. with clipflow's download job (`clipflow.download.batch.download_batch`: plan shards in, checked shards and
     a record out, one shard after another in this process with `--threads` threads),
alternating `--repeats` times, and prints each one's samples per second and the ratio.

    python bench/download_overhead.py --shards 4 --per-shard 1000 --threads 16
"""

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for number in range(count):
        pixels = rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((512, 384)).save(buffer, format="JPEG", quality=90)
        (folder / f"{number}.jpg").write_bytes(buffer.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(folder)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the image server did not start")


def plain_img2dataset(metadata: Path, output: Path, per_shard: int, processes: int, threads: int) -> float:
    from img2dataset import download

    started = time.perf_counter()
    download(
        url_list=str(metadata),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["uid"],
        output_folder=str(output),
        output_format="webdataset",
        processes_count=processes,
        thread_count=threads,
        number_sample_per_shard=per_shard,
        image_size=256,
        resize_mode="border",
        encode_quality=95,
        timeout=10,
        retries=0,
        compute_hash="sha256",
        enable_wandb=False,
    )
    return time.perf_counter() - started


def clipflow_job(metadata: Path, work: Path, per_shard: int, threads: int) -> float:
    from clipflow.config import output_settings, validate_config
    from clipflow.download.batch import download_batch
    from clipflow.ingest.planner import make_plan

    config = validate_config(
        {"input": {"paths": [str(metadata)], "uid_col": "uid"}, "plan": {"samples_per_shard": per_shard}}
    )
    plan = make_plan(config, work / "plan")  # not timed: the workflow plans once, before any download
    (work / "shards" / "batches").mkdir(parents=True)  # Snakemake makes an output's folder before the job
    started = time.perf_counter()
    download_batch(
        [plan.shard_path(shard) for shard in plan.shards],
        work / "shards",
        output_settings(config, "download"),
        [],
        work / "shards" / "batches" / f"{plan.shards[0]}.json",
        threads=threads,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--images", type=int, default=200, help="distinct images served (URLs cycle through them)")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_images(tmp / "site", args.images)
        server, base = serve(tmp / "site")
        try:
            rows = args.shards * args.per_shard
            numbers = np.arange(rows)
            metadata = tmp / "metadata.parquet"
            pd.DataFrame(
                {
                    "url": [f"{base}/{n % args.images}.jpg?row={n}" for n in numbers],
                    "caption": [f"caption {n}" for n in numbers],
                    "uid": [f"{n:032x}" for n in numbers],
                }
            ).to_parquet(metadata)
            times = {"img2dataset": [], "clipflow": []}
            for repeat in range(args.repeats):
                for name in times:
                    work = tmp / f"{name}-{repeat}"
                    work.mkdir()
                    if name == "img2dataset":
                        seconds = plain_img2dataset(metadata, work, args.per_shard, args.processes, args.threads)
                    else:
                        seconds = clipflow_job(metadata, work, args.per_shard, args.threads)
                    times[name].append(seconds)
                    shutil.rmtree(work)
        finally:
            server.terminate()
    print(f"{rows:,} images in {args.shards} shards, {args.processes} process(es), {args.threads} threads, loopback")
    for name, seconds in times.items():
        best = min(seconds)
        print(
            f"{name:>12}: best {best:.1f} s ({rows / best:,.0f} samples/s), all runs {[round(s, 1) for s in seconds]}"
        )
    ratio = min(times["img2dataset"]) / min(times["clipflow"])
    print(f"clipflow / img2dataset throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
