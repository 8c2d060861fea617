"""`snakemake --dry-run` on a finished download and embedding with its bulk data on S3 (storage.bulk, a moto server
on loopback) against the same on local disk: the time of a call and the requests it makes.

For each shard count, plans synthetic metadata (as bench/dag_scale.py does), then writes every download batch's and
embedding chunk's record with small stand-in files (3 per shard and 3 per shard's embeddings), once in a local
folder and once uploaded to S3, so that the start-of-run check finds every record complete. Each dry run then
checks them all: on local disk by a scandir per folder, on S3 by one listing of each bulk folder. moto logs a line
per request, which the benchmark counts. It also prints what one job holds locally at datacomp_large.

    .venv/bin/python bench/bulk_dry_run.py --shards 1280 12800
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from clipflow.embed import SHARD_FILES
from clipflow.shards import SUFFIXES
from dag_scale import REPO, synthetic_config, write_metadata
from object_storage import moto_server

BUCKET = "bench-bulk"
STANDIN = b"x" * 100  # each stand-in file's bytes: the check compares sizes only


def consecutive(names: list[str], size: int) -> dict[str, list[str]]:
    return {names[i]: names[i : i + size] for i in range(0, len(names), size)}


def write_records(workdir: Path, shards: list[str], per_job: tuple[int, int], bulk: str | None) -> dict[str, bytes]:
    """Every batch's and chunk's record and its files' stand-ins (written locally without `bulk`); returns the
    objects to upload with `bulk` (s3://BUCKET/prefix), by their path."""
    objects = {}
    (workdir / "results/model.json").write_text("{}")  # the model's manifest, older than the chunks' records
    layouts = (
        ("shards", "shards/batches", per_job[0], [f"{{shard}}{suffix}" for suffix in SUFFIXES]),
        ("embeddings", "embeddings/info", per_job[1], list(SHARD_FILES.values())),
    )
    for (folder, records, size, patterns), benchmarks in zip(layouts, ("download", "embed")):
        (workdir / "results" / records).mkdir(parents=True, exist_ok=True)
        (workdir / "benchmarks" / benchmarks).mkdir(parents=True, exist_ok=True)
        for job, members in consecutive(shards, size).items():
            (workdir / "benchmarks" / benchmarks / f"{job}.tsv").write_text("s\n0\n")  # the jobs' benchmark files
            names = [pattern.format(shard=shard) for shard in members for pattern in patterns]
            record = {"shards": members, "file_sizes": {name: len(STANDIN) for name in names}}
            if bulk:
                record["bulk"] = f"{bulk}/{folder}"
                objects.update({f"{bulk.removeprefix('s3://')}/{folder}/{name}": STANDIN for name in names})
            else:
                for name in names:
                    path = workdir / "results" / folder / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(STANDIN)
            (workdir / "results" / records / f"{job}.json").write_text(json.dumps(record))
    return objects


def dry_run(workdir: Path) -> tuple[float, str]:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml"]
    started = time.perf_counter()
    result = subprocess.run([*command, "-n", "--cores", "1"], cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"the dry run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def measure(shards: int, rows_per_shard: int, per_job: tuple[int, int], folder: Path, fs, log: Path) -> list:
    write_metadata(folder / "metadata.parquet", shards * rows_per_shard)
    rows = []
    for mode in ("local", "s3"):
        workdir = folder / mode
        workdir.mkdir()
        os.link(folder / "metadata.parquet", workdir / "metadata.parquet")
        bulk = f"s3://{BUCKET}/{shards}" if mode == "s3" else None
        config = {**synthetic_config(rows_per_shard, per_job), "storage": {"bulk": bulk}}
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        plan = [sys.executable, "-m", "clipflow.cli", "plan", "--config", "config.yaml"]
        subprocess.run(plan, cwd=workdir, check=True, capture_output=True)
        names = json.loads((workdir / "results/plan/state.json").read_text())["shards"]
        objects = write_records(workdir, [entry["shard"] for entry in names], per_job, bulk)
        if objects:
            fs.pipe(objects)
        before = log.read_text().count("HTTP/1.1")
        seconds, output = dry_run(workdir)
        requests = log.read_text().count("HTTP/1.1") - before
        if "rule download_batch:" in output or "rule embed_chunk:" in output:
            raise SystemExit(f"{mode}: the check reopened records it should have found complete:\n{output[-2000:]}")
        rows.append({"shards": shards, "mode": mode, "files": len(objects) or 6 * shards, "dry_run_s": seconds,
                     "requests": requests if bulk else 0})  # fmt: skip
    return rows


def held_locally() -> list[str]:
    """What one job holds on local disk at datacomp_large (its preset's jobs; DataComp's 45 TB in 128,000 shards)."""
    preset = yaml.safe_load((REPO / "config/presets/datacomp_large.yaml").read_text())
    shard_gb, batch, chunk = 45e3 / 128_000, preset["download"]["shards_per_job"], preset["embed"]["shards_per_job"]
    return [
        f"download job: 1 shard at a time (~{shard_gb:.2f} GB), of {batch} a job",
        f"embedding job: its chunk's {chunk} tars (~{chunk * shard_gb:.0f} GB), removed once embedded",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[1280, 12800])
    parser.add_argument("--rows-per-shard", type=int, default=10)
    parser.add_argument("--shards-per-job", type=int, nargs=2, default=[32, 64], help="download and embed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "moto.log"
        with open(log, "w") as log_file:
            server, endpoint = moto_server(log_file)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=endpoint)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        try:
            print(f"{'shards':>7} {'where':>6} {'files':>7} {'dry-run s':>9} {'requests':>8}")
            for shards in args.shards:
                folder = Path(scratch) / str(shards)
                folder.mkdir()
                for row in measure(shards, args.rows_per_shard, tuple(args.shards_per_job), folder, fs, log):
                    print(
                        f"{row['shards']:>7} {row['mode']:>6} {row['files']:>7} {row['dry_run_s']:>9.1f} "
                        f"{row['requests']:>8}"
                    )
        finally:
            server.terminate()
            server.wait(timeout=10)
    for line in held_locally():
        print(line)


if __name__ == "__main__":
    main()
