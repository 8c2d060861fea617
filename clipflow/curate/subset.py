"""The subsets that filters select: combining their masks, DataComp's subset file, and examples."""

import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clipflow.curate.filters.base import first_failures
from clipflow.errors import ClipflowError
from clipflow.evaluate.holdout import HELD_OUT

UID = re.compile(r"^[0-9a-fA-F]{32}$")
# removed.parquet's row groups: a download job reads the groups whose shard range meets its shards (~4 MB each)
REMOVED_ROW_GROUP = 200_000


def uid_array(uids: pd.Series) -> np.ndarray:
    """DataComp's subset format: each 128-bit hex uid as two uint64 (high, low), sorted."""
    bad = ~uids.astype(str).str.fullmatch(UID)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ClipflowError(
            f"uid {uids.iloc[row]!r} (kept row {row}) is not a 128-bit hex string: DataComp subset files hold "
            "such uids (leave input.uid_col null to derive them)"
        )
    pairs = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in uids], dtype="u8,u8")
    return np.sort(pairs, order=["f0", "f1"])


def combine(pool: pd.DataFrame, filter_tables: dict[str, pd.DataFrame]) -> tuple[np.ndarray, dict]:
    """Rows every filter keeps, and how many rows each filter removes alone, as the only one, and in
    the listed order."""
    keep = np.ones(len(pool), bool)
    effects = {}
    masks = {}
    for name, table in filter_tables.items():
        if len(table) != len(pool) or not (table["key"].to_numpy() == pool["key"].to_numpy()).all():
            raise ClipflowError(f"filter {name} was computed on another pool: rerun it")
        masks[name] = table["keep"].to_numpy()
    for name, mask in masks.items():
        others = np.logical_and.reduce([m for n, m in masks.items() if n != name] or [np.ones(len(pool), bool)])
        effects[name] = {
            "removed_alone": int((~mask).sum()),
            "removed_only_by_it": int((~mask & others).sum()),
            "removed_in_order": int((keep & ~mask).sum()),
        }
        keep &= mask
    summary = {"pool": len(pool), "kept": int(keep.sum()), "removed": int((~keep).sum()), "filters": effects}
    return keep, summary


def removed_for(removed_path, shards: list[str]) -> dict[str, dict[str, str]]:
    """The rows of `shards` that the subset leaves out, as shard -> {key: filter}, reading only the row groups
    that hold those shards."""
    table = pq.read_table(removed_path, filters=[("shard", "in", list(shards))])
    found = {shard: {} for shard in shards}
    for shard, key, name in zip(*(table[column].to_pylist() for column in ("shard", "key", "filter"))):
        found[shard][key] = name
    return found


def removed_rows(pool: pd.DataFrame, keep: np.ndarray, filter_tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The rows a subset leaves out (shard, key) with the first filter, in the listed order, that removed each:
    what a download of just the subset accounts them as. Held-out rows are not among them: the evaluation downloads
    them. Sorted by shard, so that a download job reads only its shards' row groups."""
    first = first_failures({name: ~table["keep"].to_numpy() for name, table in filter_tables.items()}, len(pool))
    removed = pd.DataFrame({"shard": pool["shard"], "key": pool["key"], "filter": first})[
        ~keep & (first != HELD_OUT).to_numpy()
    ]
    return removed.sort_values(["shard", "key"], kind="stable").reset_index(drop=True)


def examples(pool: pd.DataFrame, keep: np.ndarray, filter_tables: dict, reader, count: int = 6) -> list[tuple]:
    """Up to `count` kept and `count` removed rows (spread over the pool) as (title, image, caption),
    a removed row titled with the first filter that removed it; none without a shard reader."""
    if reader is None:
        return []
    chosen = []
    for wanted in (True, False):
        rows = np.flatnonzero(keep == wanted)
        for row in rows[np.linspace(0, len(rows) - 1, min(count, len(rows))).astype(int)] if len(rows) else []:
            image = reader.image_bytes(pool["shard"].iat[row], pool["key"].iat[row])
            if wanted:
                title = f"kept ({pool['clip_score'].iat[row]:.3f})"
            else:
                name = next(n for n, t in filter_tables.items() if not t["keep"].iat[row])
                detail = filter_tables[name]["detail"].iat[row]
                title = f"removed: {name}" + (f" ({detail})" if detail is not None else "")
            if image is not None:
                chosen.append((title, image, pool["caption"].iat[row]))
    return chosen
