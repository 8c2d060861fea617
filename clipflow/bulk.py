"""Bulk data on object storage (storage.bulk): the download shards and the per-shard embeddings kept under an
fsspec URL, as shards/ and embeddings/ below it, with the names they have under results/.

The jobs' records (results/shards/batches/, results/embeddings/info/) stay where Snakemake tracks them and name the
folder their files were uploaded to (`bulk`) beside their sizes and sha256s. A job writes its files locally, as it
does without bulk storage, and uploads them: a shard's files as soon as it is finished (its stats file last, so a
shard on the storage is complete when its stats file is there), an embedding job's files before its record. A job
reads a file where its local copy under results/ is of the recorded size (on one machine, or a shared folder, that
is the file written), and otherwise through a Cache: fetched on first use into a folder of the job's own, bounded by
`storage.cache_gb`, removed when the job ends, so that no job holds the pool on its disk. The start of a run checks
every record against one listing of each bulk folder (a LIST request per 1,000 objects on S3), never a request per
file.

Credentials come from where the backend looks for them (clipflow.storage).
"""

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections import OrderedDict
from pathlib import Path

from clipflow import files, storage
from clipflow.errors import ClipflowError

log = logging.getLogger(__name__)

EVERYTHING = ("*",)
RECENT_COPIES = 4  # a Cache keeps this many copies whatever their size: the files of one shard a reader opens together


def folder_url(bulk: str, local_folder: Path | str) -> str:
    """Where the bulk files of the local folder results/<name> are kept: <bulk>/<name>."""
    return f"{bulk.rstrip('/')}/{Path(local_folder).name}"


def listed_sizes(bulk: str, local_folders: list[Path | str]) -> dict[str, int]:
    """The size of every object kept for `local_folders`, by the local path it stands for: one listing each."""
    sizes = {}
    for folder in local_folders:
        present = storage.listing(folder_url(bulk, folder))
        sizes.update({(Path(folder) / name).as_posix(): size for name, size in present.items()})
    return sizes


def upload(local_folder: Path | str, url: str, names: list[str]) -> None:
    """Put each of `names` (relative to `local_folder`) at the same name under `url`, in the order given."""
    fs, root = storage.filesystem(url)
    for name in names:
        try:
            fs.put_file(str(Path(local_folder) / name), f"{root.rstrip('/')}/{name}")
        except OSError as error:
            raise ClipflowError(f"{url}/{name}: the upload failed: {error}") from None


def publish(record: Path | str, bulk: str | None) -> None:
    """With `bulk`, upload the files a job's record lists (relative to the folder above the record's) and name
    their folder's URL in the record; the record is rewritten only once they are all uploaded."""
    if not bulk:
        return
    record = Path(record)
    folder = record.parent.parent
    written = json.loads(record.read_text())
    url = folder_url(bulk, folder)
    upload(folder, url, list(written["file_sizes"]))
    files.write_json(record, {**written, "bulk": url})


def fetch(records: list, wanted: tuple[str, ...] = EVERYTHING) -> list[Path]:
    """Bring the files that job records list (those matching a `wanted` pattern, such as "*.parquet" or
    "image/*") into the local folder the records describe, where a record names a bulk folder and the local copy
    is missing or of another size; each copy is checked against the recorded size before it is kept. Returns the
    files fetched now. For the files of a few shards that a job reads whole (a chunk's tars); a job reading
    files of the whole pool reads them through a Cache."""
    fetched = []
    for name, local, url, size in _stored(records):
        if any(fnmatch.fnmatch(name, pattern) for pattern in wanted) and not _is_copy(local, size):
            _copy(url, size, local)
            fetched.append(local)
    return fetched


def _stored(records: list):
    """(name, local path, URL, recorded size) of every file that job records list where a record names a bulk
    folder; the name is relative to the local folder (image/00000000.npy)."""
    for record in map(Path, records):
        written = json.loads(record.read_text())
        url = written.get("bulk")
        if url:
            for name, size in written["file_sizes"].items():
                yield name, record.parent.parent / name, f"{url.rstrip('/')}/{name}", size


def _is_copy(local: Path, size: int) -> bool:
    return local.exists() and local.stat().st_size == size


def _copy(url: str, size: int, local: Path) -> None:
    """`url` copied to `local` (through a partial file: jobs on one machine may share a folder), refused unless it
    is of the recorded size."""
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f"{local.name}.{os.getpid()}.partial")
    fs, path = storage.filesystem(url)
    try:
        fs.get_file(path, str(partial))
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ClipflowError(f"{url}: cannot fetch it ({error}); rerun the workflow") from None
    if partial.stat().st_size != size:
        got = partial.stat().st_size
        partial.unlink()
        raise ClipflowError(f"{url}: {got} bytes, {size} were written; rerun the workflow")
    os.replace(partial, local)


def job_cache(records: list, config: dict) -> "Cache":
    """The Cache of `storage.cache_gb` that a job reads the bulk files of `records` through."""
    stored = {local: (url, size) for _, local, url, size in _stored(records)}
    return Cache(stored, int(config["storage"]["cache_gb"] * 2**30))


class Cache:
    """The bulk files that job records list, as a job that reads files of the whole pool sees them: `local(path)`
    gives the path of a local copy. A file whose copy is in its local folder (of the recorded size) is read there;
    any other is fetched on first use into a folder of the job's own (under $TMPDIR, node-local scratch on most
    clusters), which holds at most `budget_bytes` of copies: the least recently used go to make room for the next
    (or the last RECENT_COPIES, where they are larger). A memory map of a copy that went stays valid until it closes,
    and so does its disk space: readers drop their maps of the copies the cache no longer `holds`. The folder goes
    when the job ends. Paths that `stored` (local path: (URL, recorded size)) lacks are their own copies."""

    def __init__(self, stored: dict[Path, tuple[str, int]], budget_bytes: int):
        self.stored = stored
        self.budget = budget_bytes
        self.copies: OrderedDict[Path, tuple[Path, int]] = OrderedDict()  # least recently used first
        self.held = self.peak = self.fetched = self.files = 0  # bytes held now and at most, fetched in all; files
        self.folder: Path | None = None

    def url(self, path: Path | str) -> str | None:
        """Where a file is kept when no local copy of it is in its local folder; None for a local file."""
        path = Path(path)
        if path not in self.stored or _is_copy(path, self.stored[path][1]):
            return None
        return self.stored[path][0]

    def holds(self, path: Path | str) -> bool:
        """Whether `local(path)` gives a copy without fetching it."""
        return self.url(path) is None or Path(path) in self.copies

    def part(self, paths: list[Path]) -> "Cache":
        """A Cache of the same budget, empty, for `paths` alone: what a worker process is given for its task."""
        return Cache({path: self.stored[path] for path in map(Path, paths) if path in self.stored}, self.budget)

    def local(self, path: Path | str) -> Path:
        path = Path(path)
        if self.url(path) is None:
            return path
        if path in self.copies:
            self.copies.move_to_end(path)
            return self.copies[path][0]
        url, size = self.stored[path]
        while len(self.copies) >= RECENT_COPIES and self.held + size > self.budget:
            copy, copied = self.copies.popitem(last=False)[1]
            copy.unlink()
            self.held -= copied
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="clipflow-cache-"))
        copy = self.folder / f"{self.fetched}-{path.name}"  # unique: names repeat across kinds (image/, text/)
        _copy(url, size, copy)
        self.copies[path] = (copy, size)
        self.held += size
        self.peak = max(self.peak, self.held)
        self.fetched += size
        self.files += 1
        return copy

    def close(self) -> None:
        if self.folder is not None:
            log.info(
                "fetched %d files (%d bytes) from bulk storage through a cache of %d bytes; it held %d at most",
                self.files, self.fetched, self.budget, self.peak,
            )  # fmt: skip
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.copies.clear()
        self.held = 0

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stored_files(url: str, prefix: str) -> dict[str, int]:
    """The objects directly under `url` whose names start with `prefix`, with their sizes: on S3, one LIST request
    for that prefix, not a listing of the folder."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    try:
        found = fs.find(root, prefix=prefix, detail=True)
    except OSError as error:
        raise ClipflowError(f"{url}: cannot list it: {error}") from None
    names = {path[len(root) + 1 :]: int(info["size"]) for path, info in found.items()}
    return {name: size for name, size in names.items() if name.startswith(prefix)}


def read_object(url: str, name: str) -> bytes:
    fs, root = storage.filesystem(url)
    return fs.cat_file(f"{root.rstrip('/')}/{name}")


class _Hashing:
    """A file object's reads, hashed as they pass (tarfile reads a stream through it)."""

    def __init__(self, stream):
        self.stream, self.digest, self.bytes = stream, hashlib.sha256(), 0

    def read(self, size=-1) -> bytes:
        block = self.stream.read(size)
        self.digest.update(block)
        self.bytes += len(block)
        return block


def stored_tar_damage(url: str, shard: str, recorded: dict) -> str | None:
    """Why a shard's tar on the storage is not the one recorded in its stats file (clipflow_tar), or None: its
    sha256 and sample count from one streamed read, as clipflow.shards.damage(deep=True) checks a local one."""
    fs, root = storage.filesystem(url)
    with fs.open(f"{root.rstrip('/')}/{shard}.tar", "rb") as remote:
        stream = _Hashing(remote)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as members:
                samples = len({member.name.partition(".")[0] for member in members})
        except Exception as error:  # tarfile raises several kinds on damaged headers
            return f"not a readable tar: {error}"
        while stream.read(1 << 22):  # the padding after the last member is the tar's too
            pass
    if stream.digest.hexdigest() != recorded["sha256"]:
        return "its sha256 differs from the one recorded when it was written"
    if samples != recorded["samples"]:
        return f"{samples} samples where {recorded['samples']} were written"
    return None


def verify_stored_shards(
    url: str, remove: bool = False, present: dict[str, int] | None = None
) -> tuple[dict[str, str], int]:
    """Deep-check every complete shard in the shards folder at `url` from one listing (`present`, if made
    already), as clipflow.shards.verify_folder checks a local one: ({shard: why} for the damaged ones, shards
    checked). With `remove`, a damaged shard's objects are removed (its stats file first), so that the next run
    downloads it again."""
    from clipflow.shards import SUFFIXES  # (that module reads records through this one)

    present = storage.listing(url) if present is None else present
    complete = sorted(
        name.removesuffix("_stats.json")
        for name in present
        if name.endswith("_stats.json") and all(f"{name.removesuffix('_stats.json')}{s}" in present for s in SUFFIXES)
    )
    damaged = {}
    for shard in complete:
        recorded = json.loads(read_object(url, f"{shard}_stats.json")).get("clipflow_tar")
        if recorded is None:
            why = "its stats file has no integrity record (written before clipflow recorded one)"
        elif present[f"{shard}.tar"] != recorded["bytes"]:
            why = f"{present[f'{shard}.tar']} bytes where {recorded['bytes']} were written"
        else:
            why = stored_tar_damage(url, shard, recorded)
        if why:
            damaged[shard] = why
            if remove:
                for suffix in reversed(SUFFIXES):
                    storage.remove(f"{url}/{shard}{suffix}")
    return damaged, len(complete)
