"""A download batch: a failing shard does not stop the others, and the rerun downloads only what is missing."""

import json
import tarfile

import pandas as pd
import pytest
from PIL import Image

from clipflow.config import load_config
from clipflow.config import output_settings
from clipflow.download.batch import download_batch
from clipflow.errors import ClipflowError
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
    download_batch(plan_shards, shards, options, [], record, threads=4)
    assert shard_is_complete(shards, "00000001")
    assert (shards / "00000000.tar").stat().st_mtime_ns == kept_mtime
    assert json.loads(record.read_text())["shards"] == [
        {"shard": "00000000", "downloaded_now": False},
        {"shard": "00000001", "downloaded_now": True},
    ]

    # Other output settings make the same shards out of date: the batch downloads them again.
    download_batch(plan_shards, shards, {**options, "image_size": 64}, [], record, threads=4)
    assert json.loads(record.read_text())["shards"] == [
        {"shard": "00000000", "downloaded_now": True},
        {"shard": "00000001", "downloaded_now": True},
    ]
    with tarfile.open(shards / "00000000.tar") as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        assert Image.open(tar.extractfile(image)).size == (64, 64)
