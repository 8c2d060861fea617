"""The workflow's `blocklist` on a finished small demo run: its rows, named by every kind of key as real lists
write them, are left out of every search of the index (query, serve) without rebuilding anything, every other
row keeps its id and similarity, the audit says what was taken down, and a changed list reruns only that job."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import webdataset as wds

from clipflow.curate.subset import uid_array
from clipflow.errors import ClipflowError
from clipflow.index.folder import ClipIndex
from conftest import free_port, planned_jobs, run_snakemake, small_run_config, write_config
from served import Server


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("takedowns")
    config = small_run_config(free_port())
    config["train"]["subsets"] = []
    config["curate"]["subsets"] = {"round_shapes": {"filters": ["round_shapes"], "reshard": True}}
    write_config(workdir, config)
    run_snakemake(workdir, "--cores", "2")
    return workdir, config


def query(workdir, text="a shape") -> list[dict]:
    command = [sys.executable, "-m", "clipflow.cli", "query", "--index", str(workdir / "results/index"), text]
    result = subprocess.run([*command, "-k", "40"], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_blocklist_takes_rows_down_from_every_search_without_rebuilding(finished_run):
    workdir, config = finished_run
    before = query(workdir)
    metadata = ClipIndex(workdir / "results/index").metadata.to_pandas()
    assert len(before) == len(metadata) >= 30
    downloads = pd.concat(pd.read_parquet(p) for p in sorted((workdir / "results/shards").glob("*.parquet")))
    rows = metadata.merge(downloads[["key", "sha256"]], on="key")
    subset = workdir / "results/curate/subsets/round_shapes"
    kept = pd.read_parquet(subset / "kept.parquet")
    in_subset = rows[rows["uid"].isin(kept["uid"])]
    by_uid, by_url, by_sha256 = (in_subset.iloc[i] for i in (0, 4, 7))
    by_url_md5 = rows[~rows["uid"].isin(kept["uid"])].iloc[3]
    url = by_url["url"].replace("http://", "HTTP://") + "#fragment"
    (workdir / "optouts.csv").write_text(
        "\ufeffuid,url,note\n"
        f"{by_uid['uid']}\u00a0,,opt-out by email\n"  # a no-break space after it, as pasted from a web form
        f",\t{url} ,privacy request\n"
        f"{'f' * 32},,a uid that is in no row\n"
    )
    (workdir / "hashes.txt").write_text(f"{by_sha256['sha256'].upper()}\n\n{'0' * 64}\n")
    (workdir / "urls.txt").write_text(hashlib.md5(by_url_md5["url"].encode()).hexdigest() + "\n")
    blocked = {by_uid["uid"], by_url["uid"], by_sha256["uid"], by_url_md5["uid"]}
    config["blocklist"] = [
        "optouts.csv", {"path": "hashes.txt", "key": "sha256"}, {"path": "urls.txt", "key": "url_md5"}
    ]  # fmt: skip
    write_config(workdir, config)
    index_files = {p: p.stat().st_mtime_ns for p in (workdir / "results/index").glob("*.index")}

    changed = ["all", "curate_subset[round_shapes]", "index_takedowns", "pool_takedowns", "reshard[round_shapes]"]
    changed.append("summarize_benchmarks")  # the reshard's benchmark file is new
    assert planned_jobs(run_snakemake(workdir, "-n").stdout) == changed
    run_snakemake(workdir, "--cores", "2")
    assert {p: p.stat().st_mtime_ns for p in index_files} == index_files  # nothing rebuilt

    # The subset, its DataComp uid file and its reshards lose the three rows it held; removed.parquet lists all four
    # (a download of the subset skips them).
    now_kept = pd.read_parquet(subset / "kept.parquet")
    assert list(now_kept["uid"]) == [uid for uid in kept["uid"] if uid not in blocked]
    assert np.array_equal(
        np.load(subset / "uids.npy"), np.sort(uid_array(pa.array(now_kept["uid"])), order=["f0", "f1"])
    )
    removed = pd.read_parquet(subset / "removed.parquet")
    taken_keys = {row["key"] for row in (by_uid, by_url, by_sha256, by_url_md5)}
    assert set(removed.loc[removed["filter"] == "takedown", "key"]) == taken_keys  # each first by the takedown
    resharded = [
        s["__key__"] for s in wds.WebDataset(sorted(map(str, (subset / "shards").glob("*.tar"))), shardshuffle=False)
    ]
    assert resharded == list(now_kept["key"])
    after = query(workdir)
    assert not blocked & {result["uid"] for result in after}
    unranked = [{k: v for k, v in result.items() if k != "rank"} for result in before if result["uid"] not in blocked]
    assert [{k: v for k, v in result.items() if k != "rank"} for result in after] == unranked  # ids stay

    audit = json.loads((workdir / "results/takedowns/audit.json").read_text())
    assert audit["index"]["taken_down"] == 4
    assert audit["index"]["by_kind"] == {"uid": 1, "url": 1, "url_md5": 1, "sha256": 1}
    assert [f["keys"] for f in audit["blocklist"]["files"]] == [3, 2, 1] and len(audit["blocklist"]["sha256"]) == 64
    taken = pd.read_parquet(workdir / "results/takedowns/rows.parquet")
    assert set(metadata.loc[taken["id"], "uid"]) == blocked and set(taken["key"]) == set(
        rows[rows.uid.isin(blocked)].key
    )
    verified = subprocess.run(
        [sys.executable, "-m", "clipflow.cli", "verify", str(workdir / "results/index")], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    indices = workdir / "indices.json"
    indices.write_text(json.dumps({"demo": {"index": "results/index", "shards": "results/shards"}}))
    server = Server(indices)
    try:
        status, results = server.knn(text="a shape", modality="image", num_images=40, indice_name="demo")
        assert status == 200 and [r["id"] for r in results] == [r["id"] for r in after]
        gone = int(taken["id"].iloc[0])
        assert server.request(f"/images/demo/{gone}.jpg")[0] == 404
        assert server.request("/metadata", {"ids": [gone], "indice_name": "demo"})[1] == []
    finally:
        server.stop()

    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(run_snakemake(workdir, "-n"))
    (workdir / "urls.txt").write_text("")  # that request withdrawn: its row comes back, the others stay down
    assert planned_jobs(run_snakemake(workdir, "-n").stdout) == changed
    run_snakemake(workdir, "--cores", "2")
    assert by_url_md5["uid"] in {result["uid"] for result in query(workdir)}
    assert json.loads((workdir / "results/takedowns/audit.json").read_text())["index"]["taken_down"] == 3


def test_takedowns_matched_against_other_metadata_are_refused(finished_run, tmp_path):
    """An index whose metadata was rebuilt after its takedowns were matched (a run without the blocklist) may
    number its rows otherwise: its takedowns are refused, not applied to whatever rows hold those ids now."""
    workdir, _ = finished_run
    assert (workdir / "results/index/takedowns.npy").exists()  # left by the test before
    folder = shutil.copytree(workdir / "results/index", tmp_path / "index")
    record = json.loads((folder / "metadata.infos.json").read_text())
    record["file_sha256"]["metadata.arrow"] = "0" * 64  # as a rebuild with other rows records it
    (folder / "metadata.infos.json").write_text(json.dumps(record))
    with pytest.raises(ClipflowError, match="takedowns.npy was matched against an earlier metadata.arrow"):
        ClipIndex(folder)
