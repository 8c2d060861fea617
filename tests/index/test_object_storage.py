"""An index folder on S3 (a moto server on 127.0.0.1): `clipflow query`, ClipIndex and `clipflow serve` open it by
its URL, answer as from the local folder, copy its files once into a checked local cache, read re-ranking rows by
range, refuse a damaged object by name, and write no credential anywhere."""

import json
import subprocess
import sys

import numpy as np
import pytest

from clipflow.errors import ClipflowError
from clipflow.index.folder import ClipIndex
from conftest import moto_s3
from served import Server, build_index_folder

SECRET = "s3cr3t-never-in-any-output"
BUCKET = "clipflow-test"
TEXT = "picture number 3 of a red thing"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server (conftest.moto_s3) and a built index folder with its embeddings uploaded under
    s3://BUCKET/run/."""
    cache = tmp_path_factory.mktemp("cache")
    with moto_s3(cache, SECRET) as fs:
        root = tmp_path_factory.mktemp("built")
        indices = build_index_folder(root)
        fs.mkdir(BUCKET)
        for folder in ("index", "embeddings"):
            fs.put(str(root / folder), f"{BUCKET}/run/{folder}", recursive=True)
        yield {"fs": fs, "root": root, "indices": indices, "cache": cache, "url": f"s3://{BUCKET}/run/index"}


def query(index: str, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "clipflow.cli", "query", "--index", index, TEXT, "-k", "5", *options]
    return subprocess.run(command, capture_output=True, text=True)


def cached_files(cache) -> dict:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in cache.rglob("*") if path.is_file()}


def test_query_answers_from_an_index_on_s3_as_from_the_local_folder_and_copies_it_once(s3):
    local, remote = query(str(s3["root"] / "index")), query(s3["url"])
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and len(remote.stdout.splitlines()) == 5
    first = cached_files(s3["cache"])
    assert {"image.index", "image.ivfdata", "text.index", "text.ivfdata", "metadata.arrow", "model.json"} <= set(first)
    again = query(s3["url"])
    assert again.stdout == local.stdout
    later = cached_files(s3["cache"])
    for name in ("image.index", "image.ivfdata", "text.index", "text.ivfdata", "metadata.arrow"):
        assert later[name] == first[name], name  # the same file, not fetched again
    # no credential in what it prints or keeps
    assert SECRET not in remote.stdout + remote.stderr + again.stderr
    assert all(SECRET.encode() not in path.read_bytes() for path in s3["cache"].rglob("*") if path.is_file())


def test_stored_vectors_on_s3_are_read_by_range_and_equal_the_local_ones(s3):
    local, remote = ClipIndex(s3["root"] / "index"), ClipIndex(s3["url"])
    ids = np.array([25, 0, 7, 24, 7])
    for modality in ("image", "text"):
        np.testing.assert_array_equal(remote.vectors(modality, ids), local.vectors(modality, ids))
    assert remote.rows([3, 5]) == local.rows([3, 5])


def test_a_damaged_object_is_refused_by_its_url_and_a_mended_one_is_fetched_again(s3, tmp_path, monkeypatch):
    fs, url = s3["fs"], s3["url"]
    lists = f"{BUCKET}/run/index/text.ivfdata"
    original = fs.cat_file(lists)
    try:
        fs.pipe_file(lists, original[:-100])  # cut
        cut = query(url, "--modality", "text")
        assert cut.returncode == 1
        assert f"damaged index: {url}/text.ivfdata: {len(original) - 100} bytes, {len(original)} were written" in (
            cut.stderr
        )
        changed = bytearray(original)
        changed[len(changed) // 2] ^= 0xFF
        fs.pipe_file(lists, bytes(changed))  # the same size, other bytes: found as a fresh cache copies it
        with monkeypatch.context() as scope:
            scope.setenv("CLIPFLOW_CACHE", str(tmp_path / "fresh"))
            with pytest.raises(ClipflowError, match=f"damaged index: {url}/text.ivfdata: its sha256 is not the one"):
                ClipIndex(url)
            assert not list((tmp_path / "fresh").rglob("text.ivfdata*"))  # nothing unchecked is kept
    finally:
        fs.pipe_file(lists, original)
    mended = query(url, "--modality", "text")
    assert mended.returncode == 0, mended.stderr
    assert mended.stdout == query(str(s3["root"] / "index"), "--modality", "text").stdout


def test_serve_answers_from_an_index_on_s3(s3, tmp_path):
    indices = tmp_path / "indices.json"
    indices.write_text(json.dumps({"remote": {"index": s3["url"]}, "local": {"index": str(s3["root"] / "index")}}))
    server = Server(indices)
    try:
        answers = [
            server.knn(text=TEXT, modality="text", indice_name=name, num_images=5) for name in ("remote", "local")
        ]
    finally:
        server.stop()
    assert answers[0][0] == 200 and answers[0] == answers[1]
    assert [row["caption"] for row in answers[0][1]][0] == TEXT


def verify(url: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipflow.cli", "verify", url, *options], capture_output=True, text=True
    )


def test_verify_checks_an_index_on_s3_by_one_listing_and_its_sha256s(s3):
    fs, url = s3["fs"], s3["url"]
    clean = verify(url)
    assert clean.returncode == 0 and "3 index records checked: 0 damaged" in clean.stdout, clean.stdout + clean.stderr
    metadata = f"{BUCKET}/run/index/metadata.arrow"
    original = fs.cat_file(metadata)
    changed = bytearray(original)
    changed[-5] ^= 0xFF
    try:
        fs.pipe_file(metadata, bytes(changed))  # the same size: only the sha256 tells
        found = verify(url)
        assert found.returncode == 1
        assert f"{url}/metadata.infos.json: damaged, {url}/metadata.arrow: its sha256 is not the one" in found.stdout
        removed = verify(url, "--remove-damaged")
        assert removed.returncode == 1 and "(record removed)" in removed.stdout
        assert not fs.exists(f"{BUCKET}/run/index/metadata.infos.json")  # the next run writes the metadata again
    finally:
        fs.pipe_file(metadata, original)
        fs.put(str(s3["root"] / "index/metadata.infos.json"), f"{BUCKET}/run/index/metadata.infos.json")
    assert SECRET not in clean.stdout + clean.stderr + found.stdout + found.stderr


def test_input_files_on_s3_are_planned_as_the_same_files_on_disk(s3, tmp_path):
    """input.paths as an s3:// glob: the plan holds the rows planning the local copies gives, quirks and all."""
    import gzip

    import pandas as pd

    from clipflow.config import validate_config
    from clipflow.ingest.planner import make_plan

    local = tmp_path / "meta"
    local.mkdir()
    rows = [
        ("http://a.example/1.jpg", "A RED CAR\u00a0PARKED"),
        ("http://a.example/2.jpg", "猫がソファで寝ている"),
        ("not a url", "invalid"),
        ("http://a.example/1.jpg", "A RED CAR\u00a0PARKED"),  # a duplicate within the file
        ("HTTP://A.EXAMPLE/3.JPG?x=1&y=%20", "tab\there\x00nul"),
    ]
    pd.DataFrame(rows, columns=["url", "caption"]).to_parquet(local / "a.parquet")
    pd.DataFrame(rows[:2] + [("http://b.example/4.png", "")], columns=["url", "caption"]).to_parquet(
        local / "b.parquet"
    )  # rows of a.parquet again: duplicates across files
    (local / "c.csv.gz").write_bytes(gzip.compress(b'url,caption\nhttp://c.example/5.jpg,"Fahrrad, rot"\n'))
    s3["fs"].put(str(local), f"{BUCKET}/meta", recursive=True)
    plans = {}
    for name, pattern in (("local", str(local)), ("s3", f"s3://{BUCKET}/meta")):
        config = validate_config({"input": {"paths": [f"{pattern}/*.parquet", f"{pattern}/*.csv.gz"]}})
        plan = make_plan(config, tmp_path / f"plan-{name}")
        shards = [pd.read_parquet(plan.shard_path(shard)) for shard in plan.shards]
        plans[name] = (plan.totals(), pd.concat(shards, ignore_index=True))
    assert plans["s3"][0] == plans["local"][0] == {"rows": 9, "duplicates": 3, "invalid": 1, "planned": 5}
    pd.testing.assert_frame_equal(plans["s3"][1], plans["local"][1])
