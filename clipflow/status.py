"""`clipflow status`: how far a run is, read from the records it leaves, for a run in progress or finished, locally
or on SLURM (the records are files on the shared results folder; nothing asks the scheduler).

What it reads: the plan's state, each complete shard's stats file (its rows, successes, failures by reason, and
when it was downloaded), each embedding chunk's record, the index records, the folders of shards being
downloaded now, and Snakemake's newest log (its step count and the jobs that failed, with their logs). One
listing per folder and one small JSON file per shard: at 128,000 shards it reads ~130 MB of stats files.
"""

import html
import json
import os
import re
from collections import Counter
from pathlib import Path

from clipflow.download.accounting import RESIZE_REASONS, failure_reason
from clipflow.errors import ClipflowError
from clipflow.progress import duration

RECENT_SECONDS = 600  # the download rate is that of the shards finished in the last this-many seconds of the run


def run_status(results: Path | str, workdir: Path | str | None = None) -> dict:
    """What the records say (`record_status`), and Snakemake's newest log in `workdir` (default: above `results`)."""
    workdir = Path(workdir) if workdir is not None else Path(results).parent
    return {**record_status(results), **_snakemake(workdir)}


def record_status(results: Path | str) -> dict:
    """The plan, downloads, embeddings and indices as their records give them."""
    results = Path(results)
    state_path = results / "plan" / "state.json"
    if not state_path.exists():
        raise ClipflowError(f"{results}: no plan yet ({state_path} is missing); has the workflow run here?")
    state = json.loads(state_path.read_text())
    planned_rows = {shard["shard"]: shard["rows"] for shard in state["shards"]}
    sources = state["sources"]
    return {
        "results": str(results),
        "input_rows": sum(source["rows"] for source in sources),
        "duplicates": sum(source["duplicates"] for source in sources),
        "invalid": sum(source["invalid"] for source in sources),
        "shards": len(planned_rows),
        "planned_rows": sum(planned_rows.values()),
        "download": _downloads(results / "shards", planned_rows),
        "embedding": _embeddings(results / "embeddings" / "info"),
        "index": _indices(results / "index"),
    }


def _downloads(folder: Path, planned_rows: dict[str, int]) -> dict:
    stats = {}
    if folder.is_dir():
        for entry in os.scandir(folder):
            shard = entry.name.removesuffix("_stats.json")
            if entry.name.endswith("_stats.json") and shard in planned_rows:
                stats[shard] = json.loads(Path(entry.path).read_text())
    failures = Counter()
    for shard_stats in stats.values():
        failures.update(shard_stats.get("clipflow_failures") or _reasons(shard_stats.get("status_dict", {})))
    staging = folder / ".staging"
    done_rows = sum(planned_rows[shard] for shard in stats)
    download = {
        "shards_done": len(stats),
        "shards_downloading": sorted(p.name for p in staging.iterdir()) if staging.is_dir() else [],
        "rows_done": done_rows,
        "successes": sum(s.get("successes", 0) for s in stats.values()),
        "failures": dict(sorted(failures.items(), key=lambda item: (-item[1], item[0]))),
    }
    ends = sorted((s["end_time"], s["start_time"], planned_rows[name]) for name, s in stats.items() if "end_time" in s)
    if ends:
        last = ends[-1][0]
        recent = [(end, start, rows) for end, start, rows in ends if end >= last - RECENT_SECONDS]
        span = last - min(start for _, start, _ in recent)
        download["rows_per_second"] = sum(rows for *_, rows in recent) / span if span > 0 else None
        download["last_finished"] = last
    return download


def _reasons(status_dict: dict) -> Counter:
    """Failures by reason from img2dataset's own counts (shards downloaded before clipflow counted them itself):
    its messages do not say whether the download or the decode failed, so the reasons are read from the text."""
    reasons = Counter()
    for message, count in status_dict.items():
        if message == "success":
            continue
        downloaded = failure_reason("failed_to_download", message)
        resized = message.startswith(RESIZE_REASONS) or downloaded == "download error"
        reasons[failure_reason("failed_to_resize", message) if resized else downloaded] += count
    return reasons


def _embeddings(folder: Path) -> dict:
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    rates = sorted(r["samples_per_second"] for r in records if r.get("embedded"))
    return {
        "chunks_done": len(records),
        "shards_done": sum(len(r["shards"]) for r in records),
        "samples": sum(r["embedded"] for r in records),
        "decode_failed": sum(r["decode_failed"] for r in records),
        "samples_per_second_per_job": rates[len(rates) // 2] if rates else None,  # the median job
    }


def _indices(folder: Path) -> dict:
    indices = {}
    for modality in ("image", "text"):
        record = folder / f"{modality}.infos.json"
        parts = len(list((folder / modality / "parts").glob("*.json")))
        indices[modality] = {"vectors": json.loads(record.read_text())["size"] if record.exists() else None}
        indices[modality]["parts"] = parts
    return indices


def _snakemake(workdir: Path) -> dict:
    """The newest Snakemake log's step count and failed jobs, and whether a run holds the folder's lock now."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    locks = workdir / ".snakemake" / "locks"
    found = {"running": locks.is_dir() and any(locks.iterdir()), "log": str(logs[-1]) if logs else None}
    if not logs:
        return {**found, "steps": None, "failed_jobs": []}
    text = logs[-1].read_text(errors="replace")
    steps = re.findall(r"^(\d+) of (\d+) steps \(\d+%\) done$", text, re.M)
    failed = []
    for error in re.finditer(r"^Error in rule (\w+):\n((?:    .*\n)*)", text, re.M):
        rule, details = error.groups()
        jobid = re.search(r"^    jobid: (\d+)", details, re.M)
        if jobid and f"Trying to restart job {jobid.group(1)}." in text[error.end() :]:
            continue  # retried (with more memory and time): a later error of the same job is its own block
        job_log = re.search(r"^    log: (\S+)", details, re.M)
        slurm_log = re.search(r"^    slurm_logfile: (\S+)", details, re.M)  # the SLURM executor's
        failed.append(
            {"rule": rule, "log": job_log.group(1) if job_log else None, "slurm_log": slurm_log and slurm_log.group(1)}
        )
    return {**found, "steps": [int(n) for n in steps[-1]] if steps else None, "failed_jobs": failed}


def format_status(status: dict, now: float) -> str:
    """A `run_status` as lines of text, `now` (a time.time()) telling how long ago the last shard finished."""
    lines = [f"{status['results']}: " + ("a run is in progress" if status["running"] else "no run in progress")]
    lines += _record_lines(status, now)
    if status["steps"]:
        lines.append(f"snakemake    {status['steps'][0]:,} of {status['steps'][1]:,} steps done ({status['log']})")
    for job in status["failed_jobs"]:
        slurm = f" and {job['slurm_log']}" if job["slurm_log"] else ""
        lines.append(f"FAILED       {job['rule']}: see {job['log'] or status['log']}{slurm}")
    return "\n".join(lines)


def _record_lines(status: dict, now: float | None) -> list[str]:
    """The lines of a `record_status`; the time left only with `now` (a job of the run itself cannot tell it)."""
    download, embedding, shards = status["download"], status["embedding"], status["shards"]
    lines = [
        f"input rows {status['input_rows']:,}: {status['duplicates']:,} duplicates, {status['invalid']:,} invalid, "
        f"{status['planned_rows']:,} planned in {shards:,} shards"
    ]
    done = download["rows_done"]
    rate = f", {download['successes'] / done:.1%} of their rows downloaded" if done else ""
    lines.append(f"downloaded   {download['shards_done']:,} of {shards:,} shards{rate}")
    if download["failures"]:
        listed = ", ".join(f"{reason} {count:,}" for reason, count in list(download["failures"].items())[:8])
        lines.append(f"  failed rows {sum(download['failures'].values()):,}: {listed}")
    if download["shards_downloading"]:
        lines.append(f"  downloading now: {', '.join(download['shards_downloading'][:10])}")
    left = status["planned_rows"] - done
    if left and download.get("rows_per_second") and now is not None:
        since, speed = now - download["last_finished"], download["rows_per_second"]
        lines.append(
            f"  {speed:,.0f} rows/s lately; at that rate ~{duration(left / speed)} left"
            f" (the last shard finished {duration(since)} ago)"
        )
    embedded = f"embedded     {embedding['shards_done']:,} of {shards:,} shards ({embedding['samples']:,} samples"
    embedded += f", {embedding['decode_failed']:,} failed to decode)"
    if embedding["samples_per_second_per_job"]:
        embedded += f", {embedding['samples_per_second_per_job']:,.0f} samples/s a job"
    lines.append(embedded)
    for modality, index in status["index"].items():
        built = f"{index['vectors']:,} vectors" if index["vectors"] is not None else "not merged yet"
        parts = f"{index['parts']:,} of {embedding['chunks_done']:,} parts added"
        lines.append(f"{modality + ' index':<13}{built}, {parts}")
    return lines


def status_page(status: dict) -> str:
    """A `record_status` as an HTML page for the Snakemake report."""
    text = html.escape("\n".join(_record_lines(status, now=None)))
    return f"<!DOCTYPE html>\n<html><body><h2>Run status</h2><pre>{text}</pre></body></html>\n"
