"""Shard planning (ingest + exact dedup + shard cut) at DataComp scale on synthetic metadata.

Writes `--files` parquet files holding `--rows` rows in all (DataComp-small: 12.8M rows), of which
`--duplicate-fraction` repeat an earlier (url, caption), then plans them from scratch in a child process
with each of `--processes` worker counts and prints the wall time, the peak memory of the planning process
and of its largest worker, and the time of a no-op replan (what every later `snakemake` pays).

    python bench/plan_scale.py --rows 12800000 --files 32 --processes 1 2
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import psutil
import pyarrow.parquet as pq

PLAN_CHILD = """
import json, sys, time
from clipflow.ingest.planner import make_plan
if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    start = time.perf_counter()
    plan = make_plan(config, sys.argv[2])
    print(json.dumps({"seconds": time.perf_counter() - start, "shards": len(plan.shards), "totals": plan.totals()}))
"""


def write_metadata(folder: Path, rows: int, files: int, duplicate_fraction: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    per_file = rows // files
    paths = []
    for index in range(files):
        ids = np.arange(index * per_file, (index + 1) * per_file)
        repeats = rng.random(per_file) < duplicate_fraction
        ids[repeats] = rng.integers(0, max(1, index * per_file + 1), repeats.sum())  # an earlier row
        ids = ids.astype(str).astype(object)
        table = pa.table(
            {
                "uid": np.char.zfill(ids.astype(str), 32),
                "url": "https://images.example.com/photo/" + ids + ".jpg",
                "text": "a synthetic caption for image number " + ids,
                "original_width": rng.integers(64, 4000, per_file),
                "original_height": rng.integers(64, 4000, per_file),
            }
        )
        path = folder / f"{index:05d}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


def plan_in_child(config: dict, plan_dir: Path) -> dict:
    """Plan in a fresh process; its memory is sampled every 50 ms over the process and its workers: the peak
    of their sum, and of the largest one."""
    command = [sys.executable, "-c", PLAN_CHILD, json.dumps(config), str(plan_dir)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    total_peak = largest_peak = 0
    while child.poll() is None:
        try:
            tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
            rss = [process.memory_info().rss for process in tree]
        except psutil.NoSuchProcess:
            continue
        total_peak, largest_peak = max(total_peak, sum(rss)), max(largest_peak, max(rss))
        time.sleep(0.05)
    if child.returncode:
        raise SystemExit(f"planning failed with exit status {child.returncode}")
    return {**json.loads(child.stdout.read()), "total_mb": total_peak / 2**20, "largest_mb": largest_peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12_800_000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--duplicate-fraction", type=float, default=0.02)
    parser.add_argument("--samples-per-shard", type=int, default=10_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        paths = write_metadata(tmp, args.rows, args.files, args.duplicate_fraction, seed=0)
        print(f"wrote {args.rows:,} rows in {args.files} parquet files in {time.perf_counter() - start:.1f} s")
        os.sync()  # inputs exist long before they are planned: their writeback is not planning's time
        config = {
            "input": {"paths": paths, "format": "auto", "url_col": "url", "caption_col": "text", "uid_col": "uid"},
            "plan": {"samples_per_shard": args.samples_per_shard},
        }
        config["input"].update(keep_cols=[], metadata_cols=["original_width", "original_height"], verbatim=False)
        for processes in args.processes:
            config["plan"]["processes"] = processes
            shutil.rmtree(tmp / "plan", ignore_errors=True)
            first = plan_in_child(config, tmp / "plan")
            again = plan_in_child(config, tmp / "plan")
            totals = first["totals"]
            print(
                f"{processes} processes: plan {first['seconds']:.1f} s ({totals['rows'] / first['seconds']:,.0f} rows/s), "
                f"peak RSS {first['total_mb']:,.0f} MB in all, {first['largest_mb']:,.0f} MB the largest process, "
                f"{first['shards']:,} shards"
            )
            print(
                f"      {totals['rows']:,} rows: {totals['planned']:,} planned, "
                f"{totals['duplicates']:,} duplicates dropped"
            )
            print(f"      no-op replan: {again['seconds']:.2f} s, peak RSS {again['total_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
