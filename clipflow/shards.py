"""The shard format, owned here for every stage: img2dataset's webdataset output as the workflow stores it.

A shard NNNNNNNN is three files in one folder: `NNNNNNNN.tar` (webdataset samples `KEY.jpg`, `KEY.txt`,
`KEY.json` with uid, url, caption, key and kept columns), `NNNNNNNN.parquet` (one row per planned row, with
`status` and `error_message`; for resharded subsets, the rows it holds) and `NNNNNNNN_stats.json`, written
last: a shard is complete when its stats file is there with the other two.
"""

import json
import os
import time
from pathlib import Path

from clipflow import files

SHARD_DIGITS = 8
SUFFIXES = (".tar", ".parquet", "_stats.json")  # the stats file last: it marks a finished shard
SIZE_COLUMNS = ("original_width", "original_height")  # the image's size before resizing, per row
SAMPLE_FIELDS = ("uid", "url", "caption", "key")


def shard_name(number: int) -> str:
    return f"{number:0{SHARD_DIGITS}d}"


def tar_path(folder: Path | str, shard: str) -> Path:
    return Path(folder) / f"{shard}.tar"


def rows_path(folder: Path | str, shard: str) -> Path:
    """The shard's parquet: one row per planned row, with status and error_message."""
    return Path(folder) / f"{shard}.parquet"


def stats_path(folder: Path | str, shard: str) -> Path:
    return Path(folder) / f"{shard}_stats.json"


def shard_files(folder: Path | str, shard: str) -> list[Path]:
    return [Path(folder) / f"{shard}{suffix}" for suffix in SUFFIXES]


def missing_files(folder: Path | str, shard: str) -> list[str]:
    return [path.name for path in shard_files(folder, shard) if not path.exists()]


def is_complete(folder: Path | str, shard: str) -> bool:
    return not missing_files(folder, shard)


def shard_of(path: Path | str) -> str:
    """The shard a file or webdataset URL belongs to: 00000012 for .../00000012.tar."""
    return Path(path).name.removesuffix(".tar")


def sample_row(sample: dict, kept_columns=()) -> dict:
    """A webdataset sample's metadata (uid, url, caption, key, shard and kept columns) from its json and txt."""
    meta = json.loads(sample["json"])
    row = {field: meta.get(field) for field in SAMPLE_FIELDS}
    row["caption"] = sample["txt"].decode("utf-8") if "txt" in sample else row["caption"] or ""
    row["shard"] = shard_of(sample["__url__"])
    row.update({column: meta.get(column) for column in kept_columns})
    return row


class ShardReader:
    """Reads samples straight out of the tars of a shard folder, each tar's member offsets read once."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.members: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}  # shard -> key -> ext -> place

    def _members(self, shard: str) -> dict:
        if shard not in self.members:
            import tarfile

            path = tar_path(self.folder, shard)
            members = {}
            if path.exists():
                with tarfile.open(path) as tar:
                    for member in tar.getmembers():
                        key, _, ext = member.name.partition(".")
                        members.setdefault(key, {})[ext] = (member.offset_data, member.size)
            self.members[shard] = members
        return self.members[shard]

    def sample(self, shard: str, key: str, exts: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """The files of sample `key` in shard `shard` by extension, all or those in `exts`
        ({} when there is no such sample)."""
        places = self._members(shard).get(key, {})
        wanted = [(ext, place) for ext, place in places.items() if exts is None or ext in exts]
        sample = {}
        if wanted:
            with open(tar_path(self.folder, shard), "rb") as f:
                for ext, (offset, size) in wanted:
                    f.seek(offset)
                    sample[ext] = f.read(size)
        return sample

    def image_bytes(self, shard: str, key: str) -> bytes | None:
        """The JPEG of sample `key` in shard `shard`, or None when there is no such sample."""
        return self.sample(shard, key, ("jpg",)).get("jpg")


def write_shard(folder: Path | str, shard: str, samples, rows, stats: dict) -> None:
    """Write a complete shard: `samples` ({"__key__": ..., "jpg": ..., ...}) into the tar, `rows` (a pandas
    frame) into the parquet, then `stats` (with start and end times added) into the stats file."""
    import webdataset as wds  # imports torch: only where shards are written, not while the workflow is parsed

    started = time.time()
    tar = tar_path(folder, shard)
    with files.replacing(tar) as tmp:
        with wds.TarWriter(str(tmp)) as writer:
            for sample in samples:
                writer.write(sample)
        files.write_parquet(rows, rows_path(folder, shard))
    files.write_json(stats_path(folder, shard), {**stats, "start_time": started, "end_time": time.time()})


def remove_shard(folder: Path | str, shard: str) -> None:
    for path in shard_files(folder, shard):
        if path.exists():
            os.remove(path)
