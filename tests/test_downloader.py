"""A download batch: a failing shard does not stop the others, and the rerun downloads only what is missing."""

import json

import pandas as pd
import pytest

from clipflow.config import load_config
from clipflow.download.batch import download_batch, shard_is_complete
from clipflow.errors import ClipflowError


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
    options = load_config(tmp_path / "config.yaml")["download"]  # the defaults
    shards, record = tmp_path / "shards", tmp_path / "shards/batches/00000000.json"
    record.parent.mkdir(parents=True)
    plan_shards = [plan / "00000000.parquet", healthy]

    with pytest.raises(ClipflowError, match=r"1 of 2 shards failed.*00000001"):
        download_batch(plan_shards, shards, options, [], record)
    assert shard_is_complete(shards, "00000000") and not shard_is_complete(shards, "00000001")
    assert not record.exists()
    kept_mtime = (shards / "00000000.tar").stat().st_mtime_ns

    healthy.write_bytes(healthy_bytes)
    download_batch(plan_shards, shards, options, [], record)
    assert shard_is_complete(shards, "00000001")
    assert (shards / "00000000.tar").stat().st_mtime_ns == kept_mtime
    assert json.loads(record.read_text())["shards"] == [
        {"shard": "00000000", "downloaded_now": False},
        {"shard": "00000001", "downloaded_now": True},
    ]
