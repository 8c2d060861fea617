"""The shard format, owned here for every stage: img2dataset's webdataset output as the workflow stores it.

A shard NNNNNNNN is three files in one folder: `NNNNNNNN.tar` (webdataset samples `KEY.jpg`, `KEY.txt`,
`KEY.json` with uid, url, caption, key and kept columns), `NNNNNNNN.parquet` (one row per planned row, with
`status` and `error_message`; for resharded subsets, the rows it holds) and `NNNNNNNN_stats.json`, written
last: a shard is complete when its stats file is there with the other two.

The stats file also records the tar's size, sha256 and sample count (`clipflow_tar`), written with the shard:
every stage that reads a tar first checks its size against that record (`check_intact`, a stat), and
`clipflow verify` checks all three (`damage(..., deep=True)`, a read of the whole tar).
"""

import json
import os
import threading
import time
from pathlib import Path

from clipflow import files, storage
from clipflow.bulk import Cache
from clipflow.errors import ClipflowError

SHARD_DIGITS = 8
SUFFIXES = (".tar", ".parquet", "_stats.json")  # the stats file last: it marks a finished shard
SIZE_COLUMNS = ("original_width", "original_height")  # the image's size before resizing, per row
SAMPLE_FIELDS = ("uid", "url", "caption", "key")
FILTERED = "filtered"  # a shard parquet row's status where download.subset left the row out
NOT_FETCHED = "not fetched"  # where a verbatim plan holds a URL that is not fetched (its message says why)


def plan_keys(shard: str, rows: int) -> list[str]:
    """The keys that the download gives a plan shard's rows, in row order: img2dataset's own (shard number times
    a power of ten above the row count, plus the row), so rows never downloaded have their key too."""
    import math

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which asks PyPI
    from img2dataset.downloader import compute_key

    digits = math.ceil(math.log10(max(1, rows)))
    return [compute_key(row, int(shard), digits, len(shard)) for row in range(rows)]


def shard_name(number: int) -> str:
    return f"{number:0{SHARD_DIGITS}d}"


def tar_path(folder: Path | str, shard: str) -> Path:
    return Path(folder) / f"{shard}.tar"


def rows_path(folder: Path | str, shard: str) -> Path:
    """The shard's parquet: one row per planned row, with status and error_message."""
    return Path(folder) / f"{shard}.parquet"


def write_listing(records: list[str], path: Path | str) -> None:
    """One file standing for many job records (every download batch, every embedding chunk): jobs over the whole
    pool take it as their one input, where thousands of inputs each would cost Snakemake ~0.3 ms a file in every
    call, and several seconds in every cluster job's start-up, at 128,000 shards."""
    files.write_json(path, {"records": list(records)})


def listed(listing: Path | str) -> list[str]:
    """The job records a listing stands for, in the pool's order."""
    return json.loads(Path(listing).read_text())["records"]


def records_folder(records: list) -> Path:
    """The folder that job records (in its batches/ or info/) describe."""
    return Path(records[0]).parent.parent


def listed_shards(listing: Path | str) -> tuple[Path, list[str]]:
    """The folder the listed records describe and every shard they name, in the pool's order."""
    return recorded_shards(listed(listing))


def recorded_shards(records: list) -> tuple[Path, list[str]]:
    """The folder that job records describe and every shard they name, in order. Their files on bulk storage
    are read through a clipflow.bulk.Cache."""
    shards = [shard for record in records for shard in json.loads(Path(record).read_text())["shards"]]
    return records_folder(records), shards


def stats_path(folder: Path | str, shard: str) -> Path:
    return Path(folder) / f"{shard}_stats.json"


def shard_files(folder: Path | str, shard: str) -> list[Path]:
    return [Path(folder) / f"{shard}{suffix}" for suffix in SUFFIXES]


def missing_files(folder: Path | str, shard: str) -> list[str]:
    return [path.name for path in shard_files(folder, shard) if not path.exists()]


def is_complete(folder: Path | str, shard: str) -> bool:
    return not missing_files(folder, shard)


class DamagedShard(ClipflowError):
    pass


def tar_record(folder: Path | str, shard: str) -> dict:
    """What a shard's stats file records of its tar, to be checked wherever the tar is read."""
    path = tar_path(folder, shard)
    return {"bytes": path.stat().st_size, "sha256": files.sha256_file(path), "samples": count_samples(path)}


def count_samples(tar: Path | str) -> int:
    """Samples (distinct keys) in a tar, from its member headers; tarfile.ReadError if it is damaged."""
    import tarfile

    with tarfile.open(tar) as members:
        return len({member.name.partition(".")[0] for member in members})


def damage(folder: Path | str, shard: str, deep: bool = False) -> str | None:
    """Why a complete shard's tar is not the one its writer recorded, or None. The quick check compares the
    size; `deep` also compares the sha256 and the sample count."""
    stats = json.loads(stats_path(folder, shard).read_text())
    recorded = stats.get("clipflow_tar")
    if recorded is None:
        return "its stats file has no integrity record (written before clipflow recorded one)"
    size = tar_path(folder, shard).stat().st_size
    if size != recorded["bytes"]:
        return f"{size} bytes where {recorded['bytes']} were written"
    if deep:
        if files.sha256_file(tar_path(folder, shard)) != recorded["sha256"]:
            return "its sha256 differs from the one recorded when it was written"
        try:
            samples = count_samples(tar_path(folder, shard))
        except Exception as error:  # tarfile raises several kinds on damaged headers
            return f"not a readable tar: {error}"
        if samples != recorded["samples"]:
            return f"{samples} samples where {recorded['samples']} were written"
    return None


def check_intact(folder: Path | str, shard: str) -> None:
    """Raise DamagedShard, naming the shard, when its tar's size is not the recorded one."""
    why = damage(folder, shard)
    if why:
        raise DamagedShard(f"{tar_path(folder, shard)}: damaged, {why}; a rerun of the workflow writes it again")


def verify_folder(folder: Path | str, remove: bool = False) -> tuple[dict[str, str], int]:
    """Deep-check every complete shard in `folder`: ({shard: why} for the damaged ones, shards checked). With
    `remove`, a damaged shard's files are removed, so that the next run writes it again."""
    folder = Path(folder)
    complete = sorted(path.name.removesuffix("_stats.json") for path in folder.glob("*_stats.json"))
    complete = [shard for shard in complete if is_complete(folder, shard)]
    damaged = {}
    for shard in complete:
        why = damage(folder, shard, deep=True)
        if why:
            damaged[shard] = why
            if remove:
                remove_shard(folder, shard)
    return damaged, len(complete)


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
    """Reads samples straight out of the tars of a shard folder, each tar's member offsets read once; tars on bulk
    storage through `cache` (each copy checked against its recorded size as it is fetched)."""

    def __init__(self, folder: Path | str, cache: Cache | None = None):
        self.folder = Path(folder)
        self.cache = cache
        self.members: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}  # shard -> key -> ext -> place
        self.listing = threading.Lock()  # concurrent first reads of a tar list it once; the others wait for it

    def _members(self, shard: str) -> dict:
        if shard in self.members:
            return self.members[shard]
        with self.listing:
            return self._list_members(shard)

    def _tar(self, shard: str) -> Path:
        path = tar_path(self.folder, shard)
        return self.cache.local(path) if self.cache else path

    def _list_members(self, shard: str) -> dict:
        if shard not in self.members:
            import tarfile

            stored = self.cache is not None and self.cache.url(tar_path(self.folder, shard)) is not None
            members = {}
            if stored or tar_path(self.folder, shard).exists():
                if not stored:
                    check_intact(self.folder, shard)
                with tarfile.open(self._tar(shard)) as tar:
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
            with open(self._tar(shard), "rb") as f:
                for ext, (offset, size) in wanted:
                    f.seek(offset)
                    sample[ext] = f.read(size)
        return sample

    def image_bytes(self, shard: str, key: str) -> bytes | None:
        """The JPEG of sample `key` in shard `shard`, or None when there is no such sample."""
        return self.sample(shard, key, ("jpg",)).get("jpg")


class StoredShardReader(ShardReader):
    """A ShardReader over a shards folder on object storage (`clipflow serve`'s `/images` where `shards` is a URL):
    each tar a sample is asked of is copied once into the local cache beside its stats file, checked against the
    size and sha256 that the stats file records; shards never asked of are never fetched."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        super().__init__(storage.cache_folder("shards", self.url))

    def _list_members(self, shard: str) -> dict:
        if shard not in self.members:
            self._copy(shard)
        return super()._list_members(shard)

    def _copy(self, shard: str) -> None:
        fs, root = storage.filesystem(self.url)
        try:
            stats = fs.cat_file(f"{root.rstrip('/')}/{shard}_stats.json")
        except FileNotFoundError:
            return  # no such shard here: it has no samples
        recorded = json.loads(stats).get("clipflow_tar")
        if recorded is None:
            raise DamagedShard(f"{self.url}/{shard}_stats.json: no integrity record; a rerun of the workflow writes it")
        url = f"{self.url}/{shard}.tar"
        tar = tar_path(self.folder, shard)
        storage.cached_copy(
            fs, f"{root.rstrip('/')}/{shard}.tar", tar, recorded["bytes"], recorded["sha256"], url, "shard"
        )
        files.write_bytes(stats_path(self.folder, shard), stats)


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
    stats = {**stats, "start_time": started, "end_time": time.time(), "clipflow_tar": tar_record(folder, shard)}
    files.write_json(stats_path(folder, shard), stats)


def remove_shard(folder: Path | str, shard: str) -> None:
    for path in shard_files(folder, shard):
        if path.exists():
            os.remove(path)
