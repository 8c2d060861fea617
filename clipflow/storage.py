"""Object storage: an index folder (and the embeddings its re-ranking reads) given as an fsspec URL such as
s3://bucket/run/results/index, read through fsspec.

Credentials come from where the backend looks for them (for S3, botocore's chain: the AWS_* environment, ~/.aws
config and credential files, an instance or pod role; AWS_ENDPOINT_URL names an S3-compatible server). clipflow
never takes them as arguments, so none reaches a log, a record or the cache.

faiss maps an index's on-disk lists from a local file, so a URL index folder's files (those its records list: the
indices with their lists, the metadata, the model's manifest) are copied once into a local cache, side by side,
each checked against the size and sha256 its record gives before it is used; a later open reuses them while the
records say the same. The stored embeddings that re-ranking reads stay on the storage: rows are fetched by ranged
reads, a few KB per query, never a whole file.
"""

import hashlib
import json
import os
import posixpath
from pathlib import Path

import numpy as np

from clipflow import files
from clipflow.errors import ClipflowError

CACHE_ENVIRONMENT = "CLIPFLOW_CACHE"  # where copies of URL index folders are kept (default ~/.cache/clipflow)
SMALL_FILES = ("image.vectors.json", "text.vectors.json")  # read fresh at every open


def is_url(path) -> bool:
    """A URL of a storage other than the local file system (s3://, gs://, ...)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def filesystem(url: str):
    """(fsspec file system, path within it) for a URL."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise ClipflowError(f"{url}: no file system for this URL: {error}") from None


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENVIRONMENT)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipflow"


def cache_folder(kind: str, url: str) -> Path:
    """The local cache's folder for the copies of `kind` ("index", "shards") made from the folder at `url`."""
    folder = cache_root() / kind / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def listing(url: str) -> dict[str, int]:
    """Every file under a URL with its size, by its path relative to it: one recursive listing (a LIST request per
    1,000 objects on S3), never a request per file."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except OSError as error:
        raise ClipflowError(f"{url}: cannot list it: {error}") from None
    return {posixpath.relpath(path, root): int(info["size"]) for path, info in found.items()}


def _streamed_sha256(fs, path: str, copy=None) -> str:
    """The sha256 of an object, read once in blocks (and written to the file object `copy` as it is read)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as remote:
        for block in iter(lambda: remote.read(1 << 22), b""):
            digest.update(block)
            if copy is not None:
                copy.write(block)
    return digest.hexdigest()


def cached_copy(fs, source: str, target: Path, size: int, sha256: str, url: str, what: str = "index") -> None:
    """`source` at `target` unless an earlier copy there has the recorded sha256; checked before it is kept (a
    damaged one is refused as a damaged `what`, by its `url`)."""
    stamp = target.with_name(target.name + ".sha256")
    if target.exists() and target.stat().st_size == size and stamp.exists() and stamp.read_text() == sha256:
        return
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # two processes may fill one cache
    with open(partial, "wb") as local:
        digest = _streamed_sha256(fs, source, copy=local)
    got = partial.stat().st_size
    if got != size or digest != sha256:
        partial.unlink()
        problem = f"{got} bytes, {size} were written" if got != size else "its sha256 is not the one written"
        raise ClipflowError(f"damaged {what}: {url}: {problem}; the next workflow run writes it again")
    os.replace(partial, target)
    files.write_text(stamp, sha256)


def local_index_folder(url: str) -> Path:
    """A local copy of the index folder at `url` in the cache, checked against its records, for ClipIndex."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    target = cache_folder("index", url)
    from clipflow.index.folder import RECORDED, infos_path  # (that module reads URLs through this one)

    records = [infos_path(".", name).name for name in RECORDED]
    present = listing(url)
    if "metadata.infos.json" not in present:
        raise ClipflowError(f"{url}: not an index folder (no metadata.infos.json); run the workflow first")
    for name in (*records, *SMALL_FILES):
        if name in present:
            files.write_bytes(target / name, fs.cat_file(f"{root}/{name}"))
        else:
            (target / name).unlink(missing_ok=True)
    for record in records:
        if not (target / record).exists():
            continue
        written = json.loads((target / record).read_text())
        damage = listed_damage(url, present, written, deep=False)  # a missing or cut object, before any is read
        if damage:
            raise ClipflowError(f"damaged index: {'; '.join(damage)}; the next workflow run builds it again")
        for name, size in written["file_sizes"].items():
            cached_copy(fs, f"{root}/{name}", target / name, size, written["file_sha256"][name], f"{url}/{name}")
    return target


def joined(url: str, relative: str) -> str:
    """`relative` (a path such as ../embeddings/x.npy) resolved against the folder URL `url`."""
    protocol, _, path = url.partition("://")
    return f"{protocol}://{posixpath.normpath(posixpath.join(path, relative))}"


class RemoteRows:
    """The rows of a .npy file on object storage, read by ranged requests: `rows[ids]` as a memory map gives them."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = filesystem(url)
        try:
            with self.fs.open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as error:
            raise ClipflowError(f"{url}: an embedding file is missing or not a .npy: {error}") from None
        if fortran or len(shape) != 2:
            raise ClipflowError(f"{url}: expected a C-ordered 2-D array, not shape {shape}")
        self.shape, self.dtype = shape, dtype
        self.row_bytes = shape[1] * dtype.itemsize

    def __getitem__(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        starts = [self.offset + int(row) * self.row_bytes for row in ids]
        blocks = self.fs.cat_ranges([self.path] * len(ids), starts, [start + self.row_bytes for start in starts])
        for block in blocks:
            if isinstance(block, Exception) or len(block) != self.row_bytes:
                raise ClipflowError(f"{self.url}: cannot read its rows: {block!r}"[:300])
        return np.frombuffer(b"".join(blocks), dtype=self.dtype).reshape(len(ids), self.shape[1])


def index_record_names(present) -> list[str]:
    """The records among an index folder's files (relative names): folder_records' set, found in a listing."""
    return sorted(
        name
        for name in present
        if (name.endswith(".infos.json") and "/" not in name)
        or (name.count("/") == 1 and name.endswith("/trained.json"))
        or (name.count("/") == 2 and "/parts/" in name and name.endswith(".json"))
    )


def record_damage_at(url: str, present: dict[str, int], record_name: str) -> list[str]:
    """What is wrong with the files an index record at `url` lists, its sha256s included (see listed_damage)."""
    fs, root = filesystem(url)
    record = json.loads(fs.cat_file(f"{root.rstrip('/')}/{record_name}"))
    return listed_damage(url, present, record, deep=True, folder=posixpath.dirname(record_name))


def listed_damage(url: str, present: dict[str, int], record: dict, deep: bool, folder: str = "") -> list[str]:
    """What is wrong with the files a `files.written_record` lists (relative to `folder` under `url`): missing or
    of another size by the listing `present`, or (with `deep`) of another sha256, streamed from the storage."""
    fs, root = filesystem(url)
    problems = []
    for name, size in record.get("file_sizes", {}).items():
        relative = posixpath.join(folder, name) if folder else name
        if relative not in present:
            problems.append(f"{url}/{relative}: missing")
        elif present[relative] != size:
            problems.append(f"{url}/{relative}: {present[relative]} bytes, {size} were written")
        elif deep and name in record.get("file_sha256", {}):
            if _streamed_sha256(fs, f"{root.rstrip('/')}/{relative}") != record["file_sha256"][name]:
                problems.append(f"{url}/{relative}: its sha256 is not the one written")
    return problems


def remove(url: str) -> None:
    fs, path = filesystem(url)
    fs.rm_file(path)
