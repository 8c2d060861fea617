"""Write a subset's samples into new webdataset shards for training.

Output shard j holds the subset's downloaded rows j*S .. (j+1)*S-1 in pool order (input shard, then key), so
which samples go where is fixed before any copying: shards are written in parallel, each from the one or few
input shards its rows come from, and a rerun skips those already complete (their stats file, written
last, holds a digest of their keys and of their source tars' recorded sha256s, so a changed subset, or a source
shard downloaded again, rewrites what changed). With the input shards on bulk storage, `cache` fetches the parquets
and stats files the job reads, and each task fetches its source tars into a cache of its own (clipflow.bulk).

The subset's rows are read a row group at a time and the output shards cut as they arrive, a few in flight per
process, so that the job holds about as many output shards' rows at any subset size.
"""

import contextlib
import hashlib
import json
import logging
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clipflow import shards
from clipflow.bulk import Cache
from clipflow.errors import ClipflowError

log = logging.getLogger(__name__)
COLUMNS = ["uid", "key", "shard", "url", "caption"]  # what an output shard's parquet holds of a row


def downloaded_rows(kept_path, shards_folder, counts: dict, cache: Cache | None = None):
    """The rows of kept.parquet (in pool order) whose download succeeded, an input shard at a time; counts the
    others in counts["kept_not_downloaded"]: a subset chosen from metadata (embed.precomputed) holds rows whose
    image could not be fetched. Refuses rows out of pool order, which would move samples between output shards."""
    last, pending = ([], []), []  # the shard and key of the row before
    counts["kept_not_downloaded"] = 0

    def checked(rows: pd.DataFrame) -> pd.DataFrame:
        results = pd.read_parquet(
            _local(shards.rows_path(shards_folder, rows["shard"].iat[0]), cache), columns=["key", "status"]
        )
        found = rows[rows["key"].isin(results["key"][results["status"] == "success"])]
        counts["kept_not_downloaded"] += len(rows) - len(found)
        return found

    for group in pq.ParquetFile(kept_path).iter_batches(columns=COLUMNS):
        rows = group.to_pandas()
        if rows.empty:
            continue
        shard, key = (
            np.concatenate([before, rows[column].to_numpy()]) for before, column in zip(last, ("shard", "key"))
        )
        if not ((shard[1:] > shard[:-1]) | ((shard[1:] == shard[:-1]) & (key[1:] >= key[:-1]))).all():
            raise ClipflowError(f"{kept_path} is not in pool order (by shard, then key): run its curate_subset again")
        last = [shard[-1]], [key[-1]]
        for name, part in rows.groupby("shard", sort=False):
            if pending and pending[0]["shard"].iat[0] != name:
                yield checked(pd.concat(pending))
                pending = []
            pending.append(part)
    if pending:
        yield checked(pd.concat(pending))


def output_shards(parts, samples_per_shard: int):
    """Frames of `samples_per_shard` rows (the last may hold fewer) cut from the frames `parts` in order."""
    pending, held = [], 0
    for part in parts:
        pending.append(part)
        held += len(part)
        if held >= samples_per_shard:
            joined = pd.concat(pending, ignore_index=True)
            for start in range(0, held - samples_per_shard + 1, samples_per_shard):
                yield joined.iloc[start : start + samples_per_shard]
            pending = [joined.iloc[start + samples_per_shard :]]
            held = len(pending[0])
    if held:
        yield pd.concat(pending, ignore_index=True)


def _local(path: Path, cache: Cache | None) -> Path:
    return cache.local(path) if cache else path


def _rows_digest(rows: pd.DataFrame, shards_folder, cache: Cache | None) -> str:
    """What an output shard is made of: its keys, and the source tars they come from, by the sha256 that each
    source's stats file records (a source shard downloaded again has new bytes)."""
    digest = hashlib.sha256("\n".join(rows["key"]).encode())
    for shard in sorted(set(rows["shard"])):
        stats = json.loads(_local(shards.stats_path(shards_folder, shard), cache).read_text())
        if "clipflow_tar" not in stats:
            raise ClipflowError(f"{shards.stats_path(shards_folder, shard)}: no integrity record; rerun the workflow")
        digest.update(f"{shard} {stats['clipflow_tar']['sha256']}".encode())
    return digest.hexdigest()


def _is_complete(folder: Path, number: int, digest: str) -> bool:
    name = shards.shard_name(number)
    if not shards.is_complete(folder, name) or shards.damage(folder, name):
        return False
    return json.loads(shards.stats_path(folder, name).read_text()).get("rows_sha256") == digest


def write_shard(
    rows: pd.DataFrame, shards_folder: Path | str, folder: Path | str, number: int, digest: str, sources: Cache | None
) -> int:
    """Copy `rows`' samples verbatim (image, caption, json with uid) into shard `number` of `folder`, its source
    tars read through `sources` where they are on bulk storage; returns `number`."""

    def samples(reader):
        for shard, key in zip(rows["shard"], rows["key"]):
            sample = reader.sample(shard, key)
            if "jpg" not in sample:
                raise ClipflowError(f"sample {key} is missing from shard {shard}.tar: download that shard again")
            yield {"__key__": key, **sample}

    stats = {"count": len(rows), "successes": len(rows), "rows_sha256": digest}
    with sources or contextlib.nullcontext():
        shards.write_shard(
            folder, shards.shard_name(number), samples(shards.ShardReader(shards_folder, sources)), rows, stats
        )
    return number


def reshard(
    kept_path, shards_folder, folder, samples_per_shard: int, processes: int, cache: Cache | None = None
) -> dict:
    """Reshard the downloaded rows of `kept_path` (a subset's kept.parquet) into `folder`, the input shards read
    through `cache` where they are on bulk storage; returns a record of what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts, samples, written, planned = {}, 0, 0, 0
    in_flight = deque()  # at most two output shards a process wait their turn, so memory holds that many
    with ProcessPoolExecutor(max(1, processes)) as pool:
        for number, rows in enumerate(
            output_shards(downloaded_rows(kept_path, shards_folder, counts, cache), samples_per_shard)
        ):
            planned, samples = number + 1, samples + len(rows)
            digest = _rows_digest(rows, shards_folder, cache)
            if not _is_complete(folder, number, digest):
                tars = [shards.tar_path(shards_folder, shard) for shard in set(rows["shard"])]
                sources = cache.part(tars) if cache else None
                in_flight.append(pool.submit(write_shard, rows, shards_folder, folder, number, digest, sources))
                written += 1
            while len(in_flight) > 2 * max(1, processes) or (in_flight and in_flight[0].done()):
                log.info("wrote shard %s", shards.shard_name(in_flight.popleft().result()))
        while in_flight:
            log.info("wrote shard %s", shards.shard_name(in_flight.popleft().result()))
    for stale in folder.glob("*.tar"):  # left by an earlier, larger subset
        if int(shards.shard_of(stale)) >= planned:
            shards.remove_shard(folder, shards.shard_of(stale))
    log.info("resharded %d samples into %d shards, %d written now", samples, planned, written)
    return {
        "samples": samples,
        "samples_per_shard": samples_per_shard,
        "shards": [shards.shard_name(n) for n in range(planned)],
        "written_now": written,
        "kept_not_downloaded": counts["kept_not_downloaded"],
    }
