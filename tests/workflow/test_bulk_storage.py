"""The workflow with its bulk data on S3 (storage.bulk, a moto server on 127.0.0.1): the small demo run keeps its
shards and embeddings there, reruns nothing, works with the local copies gone, finds a deleted or cut object and
redoes its jobs, and a batch cut short resumes without fetching or downloading its finished shards again."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from clipflow.index.folder import ClipIndex
from clipflow.shards import SUFFIXES
from conftest import (
    free_port,
    moto_s3,
    planned_jobs,
    precomputed_config,
    run_snakemake,
    small_run_config,
    write_config,
    write_precomputed_input,
)
from served import Server

BUCKET = "clipflow-bulk"
BULK = f"s3://{BUCKET}/run"
SHARDS = ["00000000", "00000001"]  # the small run's two shards, one download batch and one embedding chunk
KINDS = ("image/{}.npy", "text/{}.npy", "metadata/{}.parquet")


@pytest.fixture(scope="module")
def bulk_run(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("cache")) as fs:
        fs.mkdir(BUCKET)
        workdir = tmp_path_factory.mktemp("bulk")
        config = small_run_config(free_port())
        config["train"]["subsets"] = []  # training reads the reshards, which stay in results/
        config["download"]["shards_per_job"] = 2
        config["storage"] = {"bulk": BULK}
        write_config(workdir, config)
        run_snakemake(workdir, "--cores", "2")
        yield workdir, fs


def bulk_files() -> list[str]:
    names = [f"shards/{shard}{suffix}" for shard in SHARDS for suffix in SUFFIXES]
    return names + [f"embeddings/{kind.format(shard)}" for shard in SHARDS for kind in KINDS]


def stored(fs) -> dict[str, int]:
    root = f"{BUCKET}/run/"
    return {path.removeprefix(root): info["size"] for path, info in fs.find(root, detail=True).items()}


def local_copies(workdir: Path) -> dict[str, Path]:
    return {name: workdir / "results" / name for name in bulk_files()}


def query(index: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "clipflow.cli", "query", "--index", index, "a red circle", "-k", "5"]
    return subprocess.run(command, capture_output=True, text=True, check=True)


def test_the_run_keeps_shards_and_embeddings_on_s3_reruns_nothing_and_needs_no_local_copies(bulk_run):
    workdir, fs = bulk_run
    objects = stored(fs)
    batch = json.loads((workdir / "results/shards/batches/00000000.json").read_text())
    chunk = json.loads((workdir / "results/embeddings/info/00000000.json").read_text())
    assert batch["bulk"] == f"{BULK}/shards" and chunk["bulk"] == f"{BULK}/embeddings"
    recorded = {f"shards/{name}": size for name, size in batch["file_sizes"].items()}
    recorded.update({f"embeddings/{name}": size for name, size in chunk["file_sizes"].items()})
    assert sorted(recorded) == sorted(bulk_files())
    assert all(objects[name] == size for name, size in recorded.items())

    # The index uploaded beside the bulk folders: a search re-ranks with the embeddings there, by range.
    fs.put(str(workdir / "results/index"), f"{BUCKET}/run/index", recursive=True)
    assert query(f"{BULK}/index").stdout == query(str(workdir / "results/index")).stdout
    # The service reads the images it serves out of the shards there, fetching only the shard asked of.
    indices = workdir / "indices.json"
    indices.write_text(json.dumps({"bulk": {"index": f"{BULK}/index", "shards": f"{BULK}/shards"}}))
    server = Server(indices)
    try:
        status, image = server.request("/images/bulk/3.jpg")
        assert server.request("/images/bulk/99999.jpg")[0] == 404
    finally:
        server.stop()
    row = ClipIndex(workdir / "results/index").metadata.slice(3, 1).to_pylist()[0]
    with tarfile.open(fileobj=io.BytesIO(fs.cat(f"{BUCKET}/run/shards/{row['shard']}.tar"))) as tar:
        assert status == 200 and image == tar.extractfile(f"{row['key']}.jpg").read()
    cached = [path.name for path in Path(os.environ["CLIPFLOW_CACHE"], "shards").rglob("*.tar")]
    assert cached == [f"{row['shard']}.tar"]
    objects = stored(fs)

    summary = (workdir / "results/summary/download.json").read_text()
    for local in local_copies(workdir).values():  # as on a machine that shares no folder with the others
        local.unlink(missing_ok=True)
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(run_snakemake(workdir, "-n"))
    run_snakemake(workdir, "--cores", "2", "--forcerun", "summarize_downloads")
    assert (workdir / "results/summary/download.json").read_text() == summary
    assert not any(local.exists() for local in local_copies(workdir).values())  # read through the job's own cache
    assert "fetched 2 files" in (workdir / "logs/summary/download.log").read_text()  # the parquets, and only them
    assert stored(fs) == objects


READERS = [  # the rules that read bulk files, in this run
    "summarize_downloads", "summarize_embeddings", "index_vectors", "index_train", "index_add", "index_metadata",
    "near_duplicate_centroids", "near_duplicate_assign", "curate_pool", "curate_filter", "curate_subset", "reshard",
]  # fmt: skip


def built(workdir: Path) -> dict[str, bytes]:
    """What the run built from the bulk files, by path: bytes; a tar's members (not the times in their headers);
    in a JSON record, all but when and how long it ran (and, in a stats file, the tar's sha256 and size)."""
    paths = [*(workdir / "results/index").rglob("*"), *(workdir / "results/curate").rglob("*")]
    return {path.relative_to(workdir).as_posix(): untimed(path) for path in paths if path.is_file()}


def untimed(path: Path):
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            return [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]
    if path.suffix != ".json":
        return path.read_bytes()
    written = json.loads(path.read_text())
    return {k: v for k, v in written.items() if not k.endswith(("_seconds", "_time")) and k != "clipflow_tar"}


def test_a_cache_smaller_than_a_file_rebuilds_the_same_outputs_and_fills_no_local_folder(
    bulk_run, tmp_path, monkeypatch
):
    workdir, fs = bulk_run
    for local in local_copies(workdir).values():
        local.unlink(missing_ok=True)
    before = built(workdir)
    resharded = workdir / "results/curate/subsets/clip_basic_dedup/shards"
    for shard in resharded.glob("0*"):  # so that the reshard reads its source tars again
        shard.unlink()
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    write_config(workdir, {**config, "storage": {**config["storage"], "cache_gb": 1e-6}})  # 1 KB: the last 4 files
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(run_snakemake(workdir, "-n"))  # a sizing setting
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    try:
        run_snakemake(workdir, "--cores", "2", "--forcerun", *READERS)
    finally:
        write_config(workdir, config)
    after = built(workdir)
    assert sorted(after) == sorted(before)
    assert [path for path in before if after[path] != before[path]] == []
    assert not any(local.exists() for local in local_copies(workdir).values())
    assert list(tmp_path.glob("clipflow-cache-*")) == []
    for log in (
        "index/image/train.log",
        "curate/near_duplicates/near_duplicates/assign_00000000.log",
        "curate/reshard_clip_basic_dedup.log",
    ):
        assert re.search(r"through a cache of 1073 bytes; it held \d+ at most", (workdir / "logs" / log).read_text())


def test_a_deleted_or_cut_object_is_found_and_its_jobs_run_again(bulk_run):
    workdir, fs = bulk_run
    before = stored(fs)
    fs.rm(f"{BUCKET}/run/shards/00000001.tar")
    cut = f"{BUCKET}/run/embeddings/text/00000000.npy"
    fs.pipe(cut, fs.cat(cut)[:-7])

    dry = run_snakemake(workdir, "-n")
    jobs = planned_jobs(dry.stdout)
    assert "download_batch[00000000]" in jobs and "embed_chunk[00000000]" in jobs and "fetch_model" not in jobs
    assert "00000001.tar missing" in dry.stderr and "00000000.npy is" in dry.stderr

    run_snakemake(workdir, "--cores", "2")
    assert stored(fs).keys() == before.keys()
    assert stored(fs)["embeddings/text/00000000.npy"] == before["embeddings/text/00000000.npy"]
    log = (workdir / "logs/download/00000000.log").read_text()
    assert f"shard 00000000 is complete on {BULK}/shards, kept" in log  # the intact shard is neither fetched
    assert "shard 00000001: downloading" in log  # nor downloaded; the one whose tar was lost is downloaded again
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(run_snakemake(workdir, "-n"))


def test_a_batch_cut_short_resumes_without_fetching_or_downloading_its_finished_shard(bulk_run):
    workdir, fs = bulk_run
    # What a batch killed after its first shard leaves: that shard on S3, no record, nothing local.
    finished = fs.info(f"{BUCKET}/run/shards/00000000.tar")["LastModified"]
    for suffix in SUFFIXES:
        fs.rm(f"{BUCKET}/run/shards/00000001{suffix}")
    (workdir / "results/shards/batches/00000000.json").unlink()
    for local in local_copies(workdir).values():
        local.unlink(missing_ok=True)

    run_snakemake(workdir, "--cores", "2", "results/shards/batches/00000000.json")
    log = (workdir / "logs/download/00000000.log").read_text()
    assert f"shard 00000000 is complete on {BULK}/shards, kept" in log and "shard 00000000: downloading" not in log
    assert "shard 00000001: downloading" in log
    assert fs.info(f"{BUCKET}/run/shards/00000000.tar")["LastModified"] == finished
    assert not (workdir / "results/shards/00000000.tar").exists()
    assert all(f"shards/00000001{suffix}" in stored(fs) for suffix in SUFFIXES)
    run_snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(run_snakemake(workdir, "-n"))


def verify(folder: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "clipflow.cli", "verify", str(folder), *options]
    return subprocess.run(command, capture_output=True, text=True)


def flip_a_byte(fs, path: str, at: int | None = None) -> None:
    data = bytearray(fs.cat(path))
    data[len(data) // 2 if at is None else at] ^= 0xFF
    fs.pipe(path, bytes(data))


def inside_an_image(fs, path: str) -> int:
    """An offset in the middle of a tar's first JPEG: a change there leaves the tar readable, of the same size and
    samples (the tar's middle may be a member's header, whose change tarfile sees)."""
    with tarfile.open(fileobj=io.BytesIO(fs.cat(path))) as tar:
        image = next(member for member in tar.getmembers() if member.name.endswith(".jpg"))
    return image.offset_data + image.size // 2


def test_verify_checks_the_objects_by_sha256_and_removes_what_is_damaged(bulk_run):
    workdir, fs = bulk_run
    shards, embeddings = workdir / "results/shards", workdir / "results/embeddings"
    clean = verify(shards)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"2 complete shards checked in {BULK}/shards: 0 damaged" in clean.stdout
    assert verify(embeddings).returncode == 0

    tar = f"{BUCKET}/run/shards/00000001.tar"
    flip_a_byte(fs, tar, inside_an_image(fs, tar))  # same size, same samples: only a sha256 tells
    flip_a_byte(fs, f"{BUCKET}/run/embeddings/image/00000000.npy")
    found = verify(shards)
    assert found.returncode == 1
    assert "00000001: damaged, its sha256 differs from the one recorded" in found.stdout
    assert f"{BULK}/embeddings/image/00000000.npy: its sha256 is not the one written" in verify(embeddings).stdout

    assert (
        "00000001: damaged, its sha256 differs from the one recorded when it was written (removed)"
        in verify(shards, "--remove-damaged").stdout
    )
    assert not any(f"shards/00000001{suffix}" in stored(fs) for suffix in SUFFIXES)
    assert "shards/00000000.tar" in stored(fs)
    verify(embeddings, "--remove-damaged")
    assert not (embeddings / "info/00000000.json").exists()
    jobs = planned_jobs(run_snakemake(workdir, "-n").stdout)
    assert "download_batch[00000000]" in jobs and "embed_chunk[00000000]" in jobs


def test_precomputed_embeddings_are_uploaded_before_their_records_name_the_storage(bulk_run, tmp_path):
    _, fs = bulk_run
    vectors = np.random.default_rng(3).normal(size=(1000, 32)).astype(np.float32)
    write_precomputed_input(tmp_path, "part-0", 0, vectors)
    write_config(tmp_path, {**precomputed_config(), "storage": {"bulk": f"{BULK}-precomputed"}})
    run_snakemake(tmp_path, "--cores", "2", "results/index/image.index", "results/index/metadata.arrow")
    objects = {path.rpartition("/run-precomputed/")[2] for path in fs.find(f"{BUCKET}/run-precomputed")}
    assert objects == {f"embeddings/{kind.format(f'{shard:08d}')}" for shard in range(4) for kind in KINDS}
    for chunk in ("00000000", "00000002"):
        assert json.loads((tmp_path / f"results/embeddings/info/{chunk}.json").read_text())["bulk"] == (
            f"{BULK}-precomputed/embeddings"
        )
