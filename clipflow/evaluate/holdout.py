"""The held-out slice: pool rows that no subset holds while any subset trains, chosen by a hash of each row's uid
(a row's place depends on nothing else, so the slice keeps its rows as the pool grows), and written as a
clip_benchmark retrieval data set (webdataset layout: test/0.tar, test/nshards.txt, dataset_type.txt)."""

from pathlib import Path

import numpy as np
import pandas as pd

from clipflow import files

HASH_KEY = "clipflow-holdout"  # 16 bytes: pandas' siphash key


def uid_hashes(uids: pd.Series) -> np.ndarray:
    return pd.util.hash_array(uids.astype(str).to_numpy(object), hash_key=HASH_KEY, categorize=False)


def held_out(uids: pd.Series, fraction: float) -> np.ndarray:
    """Which rows are held out: those whose uid hashes below `fraction` of the hash range."""
    return uid_hashes(uids) < np.uint64(int(fraction * 2**64))


def lowest_hash_rows(batches, count: int) -> tuple[pd.DataFrame, int]:
    """Of `batches` (pool rows and, per row, whether it is held out), the `count` held-out rows of lowest uid hash
    in hash order (ties in pool order), and how many rows are held out: at most 2 x `count` rows in memory."""
    lowest, held = None, 0
    for rows, flags in batches:
        rows = rows[flags]
        held += len(rows)
        rows = rows.assign(hash=uid_hashes(rows["uid"]))
        joined = rows if lowest is None else pd.concat([lowest, rows], ignore_index=True)
        lowest = joined.sort_values("hash", kind="stable").head(count).reset_index(drop=True)
    return (lowest if lowest is not None else pd.DataFrame(columns=["uid", "hash"])), held


def slice_samples(batches, reader, max_samples: int) -> tuple[pd.DataFrame, int]:
    """The evaluation's slice: up to `max_samples` held-out rows of lowest uid hash that have an image (as choose
    gives from every held-out row), and how many rows are held out. `batches()` reads the pool's (rows, held)
    batches anew: the job keeps twice the rows it needs, and reads again for four times as many where too few
    of them have an image."""
    candidates = 2 * max_samples
    while True:
        lowest, held = lowest_hash_rows(batches(), candidates)
        samples = choose(lowest.drop(columns="hash"), reader, max_samples)
        if len(samples) == max_samples or len(lowest) < candidates:
            return samples, held
        candidates *= 4


def choose(rows: pd.DataFrame, reader, max_samples: int) -> pd.DataFrame:
    """Up to `max_samples` of the held-out `rows` that have an image, lowest hash first (the same rows for every
    model), with their JPEGs in column `jpg`."""
    rows = rows.assign(hash=uid_hashes(rows["uid"]))
    chosen = []
    for row in rows.sort_values("hash", kind="stable").itertuples(index=False):
        image = reader.image_bytes(row.shard, row.key)
        if image is not None:
            chosen.append({"uid": row.uid, "shard": row.shard, "key": row.key, "caption": row.caption, "jpg": image})
            if len(chosen) == max_samples:
                break
    return pd.DataFrame(chosen, columns=["uid", "shard", "key", "caption", "jpg"])


def write_retrieval_dataset(samples: pd.DataFrame, folder: Path | str) -> None:
    """`samples` (with jpg and caption) as clip_benchmark's wds retrieval data set: one caption per image."""
    import webdataset as wds

    folder = Path(folder)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    with files.replacing(folder / "test" / "0.tar") as tmp, wds.TarWriter(str(tmp)) as writer:
        for number, row in enumerate(samples.itertuples(index=False)):
            caption = " ".join(row.caption.split())  # clip_benchmark reads one caption a line
            writer.write({"__key__": f"{number:08d}", "jpg": row.jpg, "txt": caption})
    files.write_text(folder / "test" / "nshards.txt", "1")
    files.write_text(folder / "dataset_type.txt", "retrieval")


HELD_OUT = "held_out"  # the slice's name where subsets account for their rows, as if it were their first filter


def holdout_table(pool: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The slice as a filter's table (key, keep, detail): a subset drops the held-out rows first."""
    return pd.DataFrame({"key": pool["key"], "keep": ~held_out(pool["uid"], fraction), "detail": None})
