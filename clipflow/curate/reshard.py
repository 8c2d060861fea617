"""Write a subset's samples into new webdataset shards for training.

Output shard j holds the subset's rows j*S .. (j+1)*S-1 in pool order (input shard, then key), so which
samples go where is fixed before any copying: shards are written in parallel, each from the one or few
input shards its rows come from, and a rerun skips those already complete (their stats file, written
last, holds a digest of their keys and source downloads, so a changed subset rewrites what changed).
"""

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import pandas as pd

from clipflow import shards
from clipflow.errors import ClipflowError

log = logging.getLogger(__name__)


def output_shards(kept: pd.DataFrame, samples_per_shard: int) -> list[pd.DataFrame]:
    ordered = kept.sort_values(["shard", "key"], kind="stable").reset_index(drop=True)
    return [ordered.iloc[i : i + samples_per_shard] for i in range(0, len(ordered), samples_per_shard)]


def _rows_digest(rows: pd.DataFrame, shards_folder) -> str:
    """What an output shard is made of: its keys, and the source tars they come from (a source shard that
    was downloaded again has a new modification time)."""
    digest = hashlib.sha256("\n".join(rows["key"]).encode())
    for shard in sorted(set(rows["shard"])):
        source = shards.tar_path(shards_folder, shard).stat()
        digest.update(f"{shard} {source.st_size} {source.st_mtime_ns}".encode())
    return digest.hexdigest()


def _is_complete(folder: Path, number: int, rows: pd.DataFrame, shards_folder) -> bool:
    name = shards.shard_name(number)
    if not shards.is_complete(folder, name) or shards.damage(folder, name):
        return False
    return json.loads(shards.stats_path(folder, name).read_text()).get("rows_sha256") == _rows_digest(
        rows, shards_folder
    )


def write_shard(rows: pd.DataFrame, shards_folder: Path | str, folder: Path | str, number: int) -> int:
    """Copy `rows`' samples verbatim (image, caption, json with uid) into shard `number` of `folder`;
    returns `number`."""
    reader = shards.ShardReader(shards_folder)

    def samples():
        for shard, key in zip(rows["shard"], rows["key"]):
            sample = reader.sample(shard, key)
            if "jpg" not in sample:
                raise ClipflowError(f"sample {key} is missing from shard {shard}.tar: download that shard again")
            yield {"__key__": key, **sample}

    stats = {"count": len(rows), "successes": len(rows), "rows_sha256": _rows_digest(rows, shards_folder)}
    shards.write_shard(folder, shards.shard_name(number), samples(), rows, stats)
    return number


def downloaded_only(kept: pd.DataFrame, shards_folder) -> tuple[pd.DataFrame, int]:
    """The kept rows whose download succeeded, and how many others there were: a subset chosen from metadata
    (embed.precomputed) holds rows whose image could not be fetched. One shard parquet at a time."""
    downloaded = []
    for shard, rows in kept.groupby("shard", sort=False):
        results = pd.read_parquet(shards.rows_path(shards_folder, shard), columns=["key", "status"])
        successes = set(results["key"][results["status"] == "success"])
        downloaded.append(rows[rows["key"].isin(successes)])
    found = pd.concat(downloaded) if downloaded else kept.iloc[:0]
    return found, len(kept) - len(found)


def reshard(kept: pd.DataFrame, shards_folder, folder, samples_per_shard: int, processes: int) -> dict:
    """Reshard `kept` (rows with shard, key) into `folder`; returns a record of what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planned = output_shards(kept, samples_per_shard)
    todo = [n for n in range(len(planned)) if not _is_complete(folder, n, planned[n], shards_folder)]
    for stale in folder.glob("*.tar"):  # left by an earlier, larger subset
        if int(shards.shard_of(stale)) >= len(planned):
            shards.remove_shard(folder, shards.shard_of(stale))
    log.info("resharding %d samples into %d shards, %d to write", len(kept), len(planned), len(todo))
    with ProcessPoolExecutor(max(1, processes)) as pool:
        written = pool.map(write_shard, [planned[n] for n in todo], repeat(shards_folder), repeat(folder), todo)
        for number in written:
            log.info("wrote shard %s", shards.shard_name(number))
    return {
        "samples": len(kept),
        "samples_per_shard": samples_per_shard,
        "shards": [shards.shard_name(n) for n in range(len(planned))],
        "written_now": len(todo),
    }
