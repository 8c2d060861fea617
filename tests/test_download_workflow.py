"""The workflow end to end against a real HTTP server on 127.0.0.1: every row ends in its right state."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds

from clipflow.accounting import failure_reason
from conftest import REPO, run_snakemake, write_config

# (path on the test server, caption, expected final state)
ROWS = [
    ("/good/0.jpg", "a plain good image", "success"),
    ("/good/1.jpg", "another good image", "success"),
    ("/missing.jpg", "gone", "http 404"),
    ("/error.jpg", "server error", "http 500"),
    ("/slow.jpg", "answers after the timeout", "timeout"),
    ("/truncated.jpg", "jpeg cut inside its headers", "not a decodable image"),
    ("/page.jpg", "html instead of an image", "not a decodable image"),
    ("/huge.jpg", "a 6000x4000 image", "success"),
    ("/redirect.jpg", "redirects to a good image", "success"),
    ("/noai.jpg", "X-Robots-Tag says noai", "disallowed by X-Robots-Tag"),
    ("/good/2.jpg", "caf\xe9 latin-1 caption", "success"),
    ("/good/0.jpg", "a plain good image", "duplicate"),
    ("", "a row without a url", "invalid"),
    ("/good/3.jpg", "good again", "success"),
    ("/good/1.jpg", "another good image", "duplicate"),
]


def write_metadata(path: Path, server: str, rows) -> None:
    """A CSV in latin-1, so the cafe caption is not valid UTF-8, as in real scraped metadata."""
    lines = ["url,caption"] + [f"{server + p if p else ''},{caption}" for p, caption, _ in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, image_server):
    workdir = tmp_path_factory.mktemp("workflow")
    write_metadata(workdir / "metadata.csv", image_server, ROWS)
    config = {
        "input": {"paths": ["metadata.csv"]},
        "plan": {"samples_per_shard": 5},
        "download": {"timeout": 2, "threads": 8, "image_size": 64},
    }
    write_config(workdir, config)
    result = run_snakemake(workdir, "--cores", "2")
    return workdir, result


def shard_results(workdir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((workdir / "results/shards").glob("*.parquet"))])


def test_every_row_ends_in_its_expected_state(workflow_run, image_server):
    workdir, _ = workflow_run
    results = shard_results(workdir)
    assert len(results) == sum(state not in ("duplicate", "invalid") for *_, state in ROWS)
    for path, caption, expected in ROWS:
        if expected in ("duplicate", "invalid"):
            continue
        row = results[results["url"] == image_server + path].iloc[0]
        state = "success" if row["status"] == "success" else failure_reason(row["status"], row["error_message"])
        assert state == expected, (path, row["status"], row["error_message"])
    dropped = pd.read_parquet(workdir / "results/plan/dropped/00000.parquet")
    assert sorted(dropped["state"]) == ["duplicate", "duplicate", "invalid"]
    assert sorted(dropped["source_row"]) == [11, 12, 14]


def test_non_utf8_caption_keeps_its_row(workflow_run, image_server):
    workdir, _ = workflow_run
    row = shard_results(workdir).set_index("url").loc[image_server + "/good/2.jpg"]
    assert row["status"] == "success"
    assert row["caption"] == "caf\ufffd latin-1 caption"


def test_summary_adds_up_per_shard_and_in_total(workflow_run):
    workdir, result = workflow_run
    summary = json.loads((workdir / "results/summary/download.json").read_text())
    expected_failed = {}
    for *_, state in ROWS:
        if state not in ("success", "duplicate", "invalid"):
            expected_failed[state] = expected_failed.get(state, 0) + 1
    assert summary["input_rows"] == len(ROWS)
    assert summary["duplicates_dropped"] == 2
    assert summary["invalid_dropped"] == 1
    assert summary["downloaded"] == sum(state == "success" for *_, state in ROWS)
    assert summary["failed"] == expected_failed
    assert [s["shard"] for s in summary["shards"]] == ["00000000", "00000001", "00000002"]
    for shard in summary["shards"]:
        stats = json.loads((workdir / f"results/shards/{shard['shard']}_stats.json").read_text())
        assert shard["downloaded"] == stats["successes"]
        assert shard["planned"] == shard["downloaded"] + sum(shard["failed"].values()) == stats["count"]
    assert (workdir / "results/summary/download.png").stat().st_size > 10_000
    assert "disallowed by X-Robots-Tag" in result.stdout + result.stderr  # the accounting is printed


def test_shards_are_valid_webdatasets_with_uids(workflow_run):
    workdir, _ = workflow_run
    tars = sorted(str(p) for p in (workdir / "results/shards").glob("*.tar"))
    assert [Path(t).name for t in tars] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    results = shard_results(workdir)
    successes = results[results["status"] == "success"]
    assert len(samples) == len(successes)
    assert len({s["__key__"] for s in samples}) == len(samples)  # keys unique across shards
    assert sorted(s["json"]["uid"] for s in samples) == sorted(successes["uid"])
    for sample in samples:
        assert max(sample["jpg"].size) <= 64
        assert sample["txt"] == sample["json"]["caption"]
    huge = next(s for s in samples if s["json"]["url"].endswith("/huge.jpg"))
    assert (huge["json"]["original_width"], huge["json"]["original_height"]) == (6000, 4000)


def jobs_in_dry_run(workdir: Path) -> list[str]:
    result = run_snakemake(workdir, "--dry-run", "--cores", "1")
    out = result.stdout + result.stderr
    assert "Building DAG of jobs" in out
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.M)
        if rule:
            shard = re.search(r"wildcards: shard=(\d+)", block)
            jobs.append(rule.group(1) + (f"[{shard.group(1)}]" if shard else ""))
    return sorted(jobs)


def test_rerun_is_a_no_op(workflow_run):
    workdir, _ = workflow_run
    assert jobs_in_dry_run(workdir) == []
    result = run_snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_deleting_one_tar_reruns_exactly_that_shard(workflow_run):
    workdir, _ = workflow_run
    shards = workdir / "results/shards"
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()}
    (shards / "00000001.tar").unlink()
    assert jobs_in_dry_run(workdir) == ["all", "download_shard[00000001]", "summarize_downloads"]
    run_snakemake(workdir, "--cores", "2")
    after = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()}
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["00000001.parquet", "00000001.tar", "00000001_stats.json"]
    assert (shards / "00000001.tar").exists()


def test_new_input_file_adds_shards_without_renumbering(workflow_run, image_server):
    workdir, _ = workflow_run
    extra = [("/good/10.jpg", "a new image", "success"), ("/good/3.jpg", "good again", "duplicate")]
    write_metadata(workdir / "more.csv", image_server, extra)
    config_path = workdir / "config.yaml"
    config_path.write_text(config_path.read_text().replace("- metadata.csv", "- metadata.csv\n  - more.csv"))
    assert jobs_in_dry_run(workdir) == ["all", "download_shard[00000003]", "summarize_downloads"]
    run_snakemake(workdir, "--cores", "2")
    summary = json.loads((workdir / "results/summary/download.json").read_text())
    assert summary["input_rows"] == len(ROWS) + 2
    assert summary["duplicates_dropped"] == 3
    assert pd.read_parquet(workdir / "results/plan/shards/00000003.parquet")["url"].tolist() == [
        image_server + "/good/10.jpg"
    ]


def test_killed_download_leaves_no_complete_shard(tmp_path, image_server):
    rows = [("/slow.jpg", "slow", "timeout"), ("/good/5.jpg", "fine", "success")]
    write_metadata(tmp_path / "metadata.csv", image_server, rows)
    write_config(tmp_path, {"input": {"paths": ["metadata.csv"]}, "download": {"timeout": 30}})
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    command += ["--configfile", str(tmp_path / "config.yaml"), "--cores", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "logs/download/00000000.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "Downloading starting now" in log.read_text()):
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.2)
    time.sleep(1)  # the slow image is being fetched now
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not list((tmp_path / "results/shards").glob("00000000*")), "a killed download left shard files"
    assert "download_shard[00000000]" in jobs_in_dry_run(tmp_path)


def test_report_holds_the_accounting_plot(workflow_run):
    workdir, _ = workflow_run
    run_snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text()
    assert "download.png" in html and "Download" in html
