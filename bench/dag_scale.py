"""`snakemake --dry-run` time and memory at DataComp scale, with the default jobs-per-shard settings.

For each shard count, writes synthetic metadata (`--rows-per-shard` rows per shard, no downloads), plans
it once with `clipflow plan`, then times a dry run of the whole workflow (which re-checks the plan,
builds the DAG of download batches, embedding chunks, indices and summaries, and lists every job), and
the start-up of one job as a cluster job starts it (`--mode remote --target-jobs`: parse the workflow,
load the plan, build that job's DAG; a dry run, so that nothing downloads).

    python bench/dag_scale.py --shards 1280 12800 128000
    python bench/dag_scale.py --shards 128000 --shards-per-job 128 256   # the datacomp_large preset's jobs
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_metadata(path: Path, rows: int) -> None:
    ids = np.arange(rows).astype(str).astype(object)
    table = pa.table({"url": "https://images.example.com/" + ids + ".jpg", "caption": "caption " + ids})
    pq.write_table(table, path)


def run_measured(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and output of one command."""
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        output.seek(0)
        text = output.read()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{command} failed:\n{text}")
    return seconds, usage.ru_maxrss / 1024, text


def synthetic_config(rows_per_shard: int, per_job: tuple[int, int]) -> dict:
    """The workflow's config for metadata.parquet: shards of `rows_per_shard` rows, download and embed jobs of
    `per_job` shards."""
    return {
        "input": {"paths": ["metadata.parquet"]},
        "demo": {"enabled": False},
        "plan": {"samples_per_shard": rows_per_shard},
        "download": {"shards_per_job": per_job[0]},
        "embed": {"shards_per_job": per_job[1]},
    }


def measure(shards: int, rows_per_shard: int, per_job: tuple[int, int], folder: Path) -> dict:
    write_metadata(folder / "metadata.parquet", shards * rows_per_shard)
    (folder / "config.yaml").write_text(yaml.safe_dump(synthetic_config(rows_per_shard, per_job)))
    plan_s, _, _ = run_measured([sys.executable, "-m", "clipflow.cli", "plan", "--config", "config.yaml"], folder)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml"]
    dry_run_s, peak_rss_mb, output = run_measured([*command, "--dry-run", "--cores", "1", "--quiet", "rules"], folder)
    jobs = next(int(line.split()[-1]) for line in output.splitlines() if line.split()[:1] == ["total"])
    batch = f"{(shards - 1) // per_job[0] * per_job[0]:08d}"  # the last download batch
    one_job = ["--target-jobs", f"download_batch:batch={batch}", "--allowed-rules", "download_batch"]
    job_s, _, _ = run_measured(
        [*command, *one_job, "--mode", "remote", "--nolock", "--dry-run", "--cores", "1"], folder
    )
    return {
        "shards": shards,
        "plan_s": plan_s,
        "dry_run_s": dry_run_s,
        "jobs": jobs,
        "peak_rss_mb": peak_rss_mb,
        "job_start_s": job_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[1280, 12800, 128000])
    parser.add_argument("--rows-per-shard", type=int, default=10)
    parser.add_argument(
        "--shards-per-job", type=int, nargs=2, default=[32, 64], help="download and embed shards_per_job (defaults)"
    )
    args = parser.parse_args()
    print(f"{'shards':>8} {'jobs':>6} {'plan s':>7} {'dry-run s':>9} {'peak RSS MB':>11} {'job start-up s':>14}")
    for shards in args.shards:
        with tempfile.TemporaryDirectory() as folder:
            row = measure(shards, args.rows_per_shard, tuple(args.shards_per_job), Path(folder))
        print(
            f"{row['shards']:>8} {row['jobs']:>6} {row['plan_s']:>7.1f} {row['dry_run_s']:>9.1f} "
            f"{row['peak_rss_mb']:>11.0f} {row['job_start_s']:>14.1f}"
        )


if __name__ == "__main__":
    main()
