"""A download batch: a failing shard does not stop the others, and the rerun downloads only what is missing."""

import io
import json
import os
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipflow.config import load_config
from clipflow.config import output_settings
from clipflow.download.batch import download_batch, settings_digest
from clipflow.errors import ClipflowError
from clipflow.shards import DamagedShard, ShardReader, verify_folder
from clipflow.shards import is_complete as shard_is_complete


def test_failed_shard_fails_the_batch_and_only_it_is_downloaded_again(tmp_path, image_server):
    plan = tmp_path / "plan"
    plan.mkdir()
    for shard, n in (("00000000", 0), ("00000001", 1)):
        frame = pd.DataFrame({"url": [f"{image_server}/good/{n}.jpg"], "caption": [f"image {n}"], "uid": [f"{n:032x}"]})
        frame.to_parquet(plan / f"{shard}.parquet")
    healthy = plan / "00000001.parquet"
    healthy_bytes = healthy.read_bytes()
    healthy.write_bytes(b"not a parquet file")  # shard 1 breaks
    (tmp_path / "config.yaml").write_text("input: {paths: [unused.csv]}\n")
    options = output_settings(load_config(tmp_path / "config.yaml"), "download")  # the defaults
    shards, record = tmp_path / "shards", tmp_path / "shards/batches/00000000.json"
    record.parent.mkdir(parents=True)
    plan_shards = [plan / "00000000.parquet", healthy]

    with pytest.raises(ClipflowError, match=r"1 of 2 shards failed.*00000001"):
        download_batch(plan_shards, shards, options, [], record, threads=4)
    assert shard_is_complete(shards, "00000000") and not shard_is_complete(shards, "00000001")
    assert not record.exists()
    kept_mtime = (shards / "00000000.tar").stat().st_mtime_ns

    healthy.write_bytes(healthy_bytes)
    assert download_batch(plan_shards, shards, options, [], record, threads=4) == ["00000001"]
    assert shard_is_complete(shards, "00000001")
    assert (shards / "00000000.tar").stat().st_mtime_ns == kept_mtime
    assert json.loads(record.read_text())["shards"] == ["00000000", "00000001"]
    written = record.read_bytes()
    assert download_batch(plan_shards, shards, options, [], record, threads=4) == []
    assert record.read_bytes() == written  # a rerun that keeps every shard: the same record, nothing after reruns

    # Other output settings make the same shards out of date: the batch downloads them again.
    downloaded = download_batch(plan_shards, shards, {**options, "image_size": 64}, [], record, threads=4)
    assert downloaded == ["00000000", "00000001"]
    with tarfile.open(shards / "00000000.tar") as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        assert Image.open(tar.extractfile(image)).size == (64, 64)


def test_a_damaged_shard_is_found_by_verify_and_downloaded_again_alone(tmp_path, image_server):
    plan, shards, record = tmp_path / "plan", tmp_path / "shards", tmp_path / "shards/batches/00000000.json"
    plan.mkdir()
    record.parent.mkdir(parents=True)
    plan_shards = []
    for n in range(3):
        plan_shards.append(plan / f"{n:08d}.parquet")
        rows = {"url": [f"{image_server}/good/{n}.jpg", f"{image_server}/good/{n + 10}.jpg"], "caption": ["a", "b"]}
        pd.DataFrame({**rows, "uid": [f"{n:031x}0", f"{n:031x}1"]}).to_parquet(plan_shards[-1])
    (tmp_path / "config.yaml").write_text("input: {paths: [unused.csv]}\n")
    options = output_settings(load_config(tmp_path / "config.yaml"), "download")
    download_batch(plan_shards, shards, options, [], record, threads=4)
    sizes = json.loads(record.read_text())["file_sizes"]
    assert sizes["00000001.tar"] == (shards / "00000001.tar").stat().st_size and len(sizes) == 9
    assert verify_folder(shards) == ({}, 3)

    tar = shards / "00000001.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size: only the sha256 tells
    tar.write_bytes(bytes(data))
    damaged, checked = verify_folder(shards, remove=True)
    assert list(damaged) == ["00000001"] and "sha256" in damaged["00000001"] and checked == 3
    assert not tar.exists() and not (shards / "00000001_stats.json").exists()
    kept = {n: (shards / f"0000000{n}.tar").stat().st_mtime_ns for n in (0, 2)}
    assert download_batch(plan_shards, shards, options, [], record, threads=4) == ["00000001"]
    assert kept == {n: (shards / f"0000000{n}.tar").stat().st_mtime_ns for n in (0, 2)}

    os.truncate(tar, tar.stat().st_size - 512)  # cut short: the size tells, and the batch notices by itself
    with pytest.raises(DamagedShard, match=r"00000001.tar: damaged, \d+ bytes where \d+ were written"):
        ShardReader(shards).sample("00000001", "anything")
    assert download_batch(plan_shards, shards, options, [], record, threads=4) == ["00000001"]


def test_face_boxes_are_blurred_and_small_images_kept_as_datacomp_downloads(tmp_path, image_server):
    """DataComp's download settings: boxes from the metadata are blurred (img2dataset's blurrer), and with
    resize_only_if_bigger an image smaller than image_size keeps its size."""
    plan = tmp_path / "plan"
    plan.mkdir()
    boxes = [[[0.0, 0.0, 0.5, 0.5]], []]  # the same image: blurred top-left quarter, and untouched
    frame = pd.DataFrame(
        {
            "url": [f"{image_server}/good/3.jpg"] * 2,
            "caption": ["a face", "no face"],
            "uid": [f"{n:032x}" for n in range(2)],
            "face_bboxes": boxes,
        }
    )
    frame.to_parquet(plan / "00000000.parquet")
    (tmp_path / "config.yaml").write_text(
        "input: {paths: [unused.parquet], keep_cols: [face_bboxes]}\n"
        "download: {image_size: 512, resize_mode: keep_ratio_largest, resize_only_if_bigger: true, "
        "bbox_col: face_bboxes}\n"
    )
    options = output_settings(load_config(tmp_path / "config.yaml"), "download")
    shards = tmp_path / "shards"
    download_batch([plan / "00000000.parquet"], shards, options, ["face_bboxes"], tmp_path / "r.json", threads=2)

    images = {}
    with tarfile.open(shards / "00000000.tar") as tar:
        for member in tar.getmembers():
            if member.name.endswith(".json"):
                sample = json.loads(tar.extractfile(member).read())
                jpg = tar.extractfile(member.name.replace(".json", ".jpg")).read()
                images[sample["caption"]] = (np.asarray(Image.open(io.BytesIO(jpg)).convert("L"), float), sample)
    blurred, sample = images["a face"]
    plain, _ = images["no face"]
    assert blurred.shape == plain.shape == (240, 320)  # smaller than 512: kept at its size
    assert sample["face_bboxes"] == boxes[0]
    quarter = (slice(0, 120), slice(0, 160))
    sharpness = lambda pixels: np.abs(np.diff(pixels, axis=1)).mean()  # noqa: E731
    assert sharpness(blurred[quarter]) < 0.4 * sharpness(plain[quarter])
    far_corner = (slice(150, 240), slice(220, 320))  # outside the box and its margin
    assert abs(blurred[far_corner] - plain[far_corner]).mean() < 2


def test_new_settings_at_their_old_behaviour_rerun_nothing(tmp_path):
    """Settings added since the first release (resize_only_if_bigger, bbox_col, subset), at the values that do what
    the download did before them, are in neither the rule's params nor the shards' digest: an upgraded finished
    run reruns nothing. The subset's name is never in the digest (the shard's own selection is)."""
    (tmp_path / "config.yaml").write_text("input: {paths: [unused.csv]}\n")
    config = load_config(tmp_path / "config.yaml")
    options = output_settings(config, "download")
    assert not {"resize_only_if_bigger", "bbox_col", "subset"} & set(options)
    config["download"].update(resize_only_if_bigger=True, subset="s")
    changed = output_settings(config, "download")
    assert changed["resize_only_if_bigger"] is True and changed["subset"] == "s"
    assert settings_digest({**options, "subset": "other"}, []) == settings_digest(options, [])
    assert settings_digest({**options, "resize_only_if_bigger": True}, []) != settings_digest(options, [])
    assert settings_digest(options, [], {"0001": "clip"}) != settings_digest(options, [])
