"""Shard planning (ingest + exact dedup + shard cut) at DataComp scale on synthetic metadata.

Writes `--files` parquet files holding `--rows` rows in all (DataComp-small: 12.8M rows), of which
`--duplicate-fraction` repeat an earlier (url, caption), then plans them in a child process and prints
its wall time and peak memory, and the time of a no-op replan (what every later `snakemake` pays).

    python bench/plan_scale.py --rows 12800000 --files 32
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PLAN_CHILD = """
import json, resource, sys, time
from clipflow.ingest.planner import make_plan
config = json.loads(sys.argv[1])
start = time.perf_counter()
plan = make_plan(config, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start, "shards": len(plan.shards), "totals": plan.totals(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
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
    command = [sys.executable, "-c", PLAN_CHILD, json.dumps(config), str(plan_dir)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12_800_000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--duplicate-fraction", type=float, default=0.02)
    parser.add_argument("--samples-per-shard", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        paths = write_metadata(tmp, args.rows, args.files, args.duplicate_fraction, seed=0)
        print(f"wrote {args.rows:,} rows in {args.files} parquet files in {time.perf_counter() - start:.1f} s")
        config = {
            "input": {"paths": paths, "format": "auto", "url_col": "url", "caption_col": "text", "uid_col": "uid"},
            "plan": {"samples_per_shard": args.samples_per_shard},
        }
        config["input"].update(keep_cols=[], metadata_cols=["original_width", "original_height"])
        first = plan_in_child(config, tmp / "plan")
        again = plan_in_child(config, tmp / "plan")
        totals = first["totals"]
        print(
            f"plan: {first['seconds']:.1f} s ({totals['rows'] / first['seconds']:,.0f} rows/s), "
            f"peak RSS {first['peak_rss_mb']:,.0f} MB, {first['shards']:,} shards"
        )
        print(
            f"      {totals['rows']:,} rows: {totals['planned']:,} planned, {totals['duplicates']:,} duplicates dropped"
        )
        print(f"no-op replan: {again['seconds']:.2f} s, peak RSS {again['peak_rss_mb']:,.0f} MB")
        print(
            f"this process peak RSS (data generation): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
        )


if __name__ == "__main__":
    main()
