"""Bulk data on object storage (storage.bulk): the download shards and the per-shard embeddings kept under an
fsspec URL, as shards/ and embeddings/ below it, with the names they have under results/.

The jobs' records (results/shards/batches/, results/embeddings/info/) stay where Snakemake tracks them and name the
folder their files were uploaded to (`bulk`) beside their sizes and sha256s. A job writes its files locally, as it
does without bulk storage, and uploads them: a shard's files as soon as it is finished (its stats file last, so a
shard on the storage is complete when its stats file is there), an embedding job's files before its record. A job
that reads them fetches the files its input records list, and only those it reads, into the local folders under
results/: a cache that is checked against the recorded sizes, reused while it matches, and may be deleted at any
time. The start of a run checks every record against one listing of each bulk folder (a LIST request per 1,000
objects on S3), never a request per file.

Credentials come from where the backend looks for them (clipflow.storage).
"""

import fnmatch
import hashlib
import json
import os
import tarfile
from pathlib import Path

from clipflow import files, storage
from clipflow.errors import ClipflowError

EVERYTHING = ("*",)


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
    files fetched now."""
    fetched = []
    for record in map(Path, records):
        written = json.loads(record.read_text())
        url = written.get("bulk")
        if not url:
            continue
        folder = record.parent.parent
        fs, root = storage.filesystem(url)
        for name, size in written["file_sizes"].items():
            local = folder / name
            if not any(fnmatch.fnmatch(name, pattern) for pattern in wanted):
                continue
            if local.exists() and local.stat().st_size == size:
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f"{local.name}.{os.getpid()}.partial")  # jobs on one machine share the cache
            try:
                fs.get_file(f"{root.rstrip('/')}/{name}", str(partial))
            except OSError as error:
                partial.unlink(missing_ok=True)
                raise ClipflowError(f"{url}/{name}: cannot fetch it ({error}); rerun the workflow") from None
            if partial.stat().st_size != size:
                got = partial.stat().st_size
                partial.unlink()
                raise ClipflowError(f"{url}/{name}: {got} bytes, {size} were written; rerun the workflow")
            os.replace(partial, local)
            fetched.append(local)
    return fetched


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
