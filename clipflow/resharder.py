"""Write a subset's samples into new webdataset shards for training.

Output shard j holds the subset's rows j*S .. (j+1)*S-1 in pool order (input shard, then key), so which
samples go where is fixed before any copying: shards are written in parallel, each from the one or few
input shards its rows come from, and a rerun skips those already complete (their stats file, written
last, names the keys they hold, so a changed subset rewrites what changed).
"""

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import pandas as pd
import webdataset as wds

from clipflow.errors import ClipflowError
from clipflow.searcher import ShardReader

log = logging.getLogger(__name__)


def output_shards(kept: pd.DataFrame, samples_per_shard: int) -> list[pd.DataFrame]:
    ordered = kept.sort_values(["shard", "key"], kind="stable").reset_index(drop=True)
    return [ordered.iloc[i : i + samples_per_shard] for i in range(0, len(ordered), samples_per_shard)]


def _stats_path(folder: Path, number: int) -> Path:
    return folder / f"{number:08d}_stats.json"


def _keys_digest(rows: pd.DataFrame) -> str:
    return hashlib.sha256("\n".join(rows["key"]).encode()).hexdigest()


def _is_complete(folder: Path, number: int, rows: pd.DataFrame) -> bool:
    path = _stats_path(folder, number)
    return path.exists() and json.loads(path.read_text()).get("keys_sha256") == _keys_digest(rows)


def write_shard(rows: pd.DataFrame, shards_folder: Path | str, folder: Path | str, number: int) -> int:
    """Copy `rows`' samples verbatim (image, caption, json with uid) into `folder`/NNNNNNNN.tar,
    with its parquet and, last, its stats file; returns `number`."""
    started = time.time()
    folder = Path(folder)
    reader = ShardReader(shards_folder)
    tar, parquet = folder / f"{number:08d}.tar", folder / f"{number:08d}.parquet"
    with wds.TarWriter(str(tar) + ".tmp") as writer:
        for shard, key in zip(rows["shard"], rows["key"]):
            sample = reader.sample(shard, key)
            if "jpg" not in sample:
                raise ClipflowError(f"sample {key} is missing from shard {shard}.tar: download that shard again")
            writer.write({"__key__": key, **sample})
    rows.to_parquet(str(parquet) + ".tmp", index=False)
    os.replace(str(tar) + ".tmp", tar)
    os.replace(str(parquet) + ".tmp", parquet)
    stats = {
        "count": len(rows),
        "successes": len(rows),
        "keys_sha256": _keys_digest(rows),
        "start_time": started,
        "end_time": time.time(),
    }
    _stats_path(folder, number).write_text(json.dumps(stats, indent=1))
    return number


def reshard(kept: pd.DataFrame, shards_folder, folder, samples_per_shard: int, processes: int) -> dict:
    """Reshard `kept` (rows with shard, key) into `folder`; returns a record of what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planned = output_shards(kept, samples_per_shard)
    todo = [n for n in range(len(planned)) if not _is_complete(folder, n, planned[n])]
    for stale in folder.glob("*.tar"):  # left by an earlier, larger subset
        if int(stale.name[:8]) >= len(planned):
            for suffix in (".tar", ".parquet", "_stats.json"):
                (folder / f"{stale.name[:8]}{suffix}").unlink(missing_ok=True)
    log.info("resharding %d samples into %d shards, %d to write", len(kept), len(planned), len(todo))
    with ProcessPoolExecutor(max(1, processes)) as pool:
        written = pool.map(write_shard, [planned[n] for n in todo], repeat(shards_folder), repeat(folder), todo)
        for number in written:
            log.info("wrote shard %08d", number)
    return {
        "samples": len(kept),
        "samples_per_shard": samples_per_shard,
        "shards": [f"{n:08d}" for n in range(len(planned))],
        "written_now": len(todo),
    }
