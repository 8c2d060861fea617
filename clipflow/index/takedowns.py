"""The index's takedowns (config `blocklist`): the ids of the rows a blocklist (clipflow.blocklist) names, which
every search of the index folder leaves out (ClipIndex.search: `clipflow query`, `filter`, `serve`). No index is
retrained or renumbered: the ids of every other row stay. Written as `takedowns.npy` (sorted int64 ids) with its
record `takedowns.infos.json`, and an audit of what was taken down.

Rows are matched by uid and URL against the index's metadata and, for image-hash keys, by md5 or sha256 against
the download shards' parquets (img2dataset's hash columns), a record batch or a shard at a time: the job holds
the blocklist, one batch and the ids it takes down, whatever the pool's size."""

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipflow import files
from clipflow.blocklist import IMAGE_HASHES, KINDS, read_blocklist
from clipflow.bulk import Cache
from clipflow.errors import ClipflowError

TAKEDOWNS = "takedowns.npy"
ROWS = pa.schema([("id", pa.int64()), ("shard", pa.string()), ("key", pa.string()), ("kind", pa.string())])


def write_takedowns(
    entries: list,
    index_folder: Path | str,
    downloads: list[tuple[str, Path]],
    rows_path: Path | str,
    audit_path: Path | str,
    cache: Cache | None = None,
) -> int:
    """Match the blocklist of `entries` against the index folder's rows (and the image hashes in `downloads`, each
    shard's name and parquet, on bulk storage read through `cache`); write the index's takedowns and its record,
    the rows taken down (`rows_path`: id, shard, key, the kind of key that matched) and the audit (`audit_path`).
    Returns how many rows are taken down."""
    folder = Path(index_folder)
    blocklist = read_blocklist(entries)
    by_image = _image_matches(blocklist, downloads, cache) if any(blocklist.keys[k] for k in IMAGE_HASHES) else {}
    metadata = pa.ipc.open_file(pa.memory_map(str(folder / "metadata.arrow"))).read_all()
    ids, kinds = matched_rows(blocklist, metadata, by_image)
    places = metadata.select([name for name in ("shard", "key") if name in metadata.column_names]).take(ids)
    found = {
        name: places[name].to_pylist() if name in places.column_names else [None] * len(ids)
        for name in ("shard", "key")
    }
    found["kind"] = list(kinds)
    with files.replacing(folder / TAKEDOWNS) as tmp, open(tmp, "wb") as out:
        np.save(out, ids)
    matched_against = _metadata_sha256(folder)  # ids name rows of this metadata only
    record = {
        "rows": len(ids),
        "metadata_sha256": matched_against,
        **files.written_record([folder / TAKEDOWNS], folder),
    }
    files.write_json(folder / "takedowns.infos.json", record)
    taken = pa.table({"id": ids, "shard": found["shard"], "key": found["key"], "kind": found["kind"]}, schema=ROWS)
    with files.replacing(rows_path) as tmp:
        pq.write_table(taken, tmp)
    counts = {kind: found["kind"].count(kind) for kind in KINDS if found["kind"].count(kind)}
    files.write_json(
        audit_path,
        {
            "blocklist": {"sha256": blocklist.checksum, "files": blocklist.files},
            "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index": {"folder": str(folder), "rows": metadata.num_rows, "taken_down": len(ids), "by_kind": counts},
            "rows": str(rows_path),
        },
    )
    return len(ids)


def matched_rows(blocklist, metadata: pa.Table, by_image: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ids (ascending) of the rows of index metadata that `blocklist` names, and the kind of key that named
    each; `by_image` ((shard, key) -> kind) adds the rows named by their image's hash. A record batch at a time."""
    columns = [name for name in ("uid", "url", *IMAGE_HASHES, "shard", "key") if name in metadata.column_names]
    ids, kinds, start = [], [], 0
    for batch in metadata.select(columns).to_batches():
        table = pa.Table.from_batches([batch])
        found = blocklist.matches(table)
        if by_image:
            places = zip(table["shard"].to_pylist(), table["key"].to_pylist())
            image = np.array([by_image.get(place, "") for place in places], dtype=object)
            found = np.where(found == "", image, found)
        hit = np.flatnonzero(found != "")
        ids.append(hit + start)
        kinds.append(found[hit])
        start += batch.num_rows
    return np.concatenate([np.empty(0, np.int64), *ids]).astype(np.int64), np.concatenate([np.empty(0, object), *kinds])


def _image_matches(blocklist, downloads: list[tuple[str, Path]], cache: Cache | None) -> dict[tuple, str]:
    """(shard, key) -> the image-hash kind that blocks it, from the download shards' parquets."""
    if not downloads:
        raise ClipflowError(
            "the blocklist names images by md5 or sha256, which come from the download shards: this run has none "
            "(embed.precomputed); name its rows by uid or URL"
        )
    blocked = {}
    for shard, parquet in downloads:
        path = cache.local(parquet) if cache else parquet
        names = pq.ParquetFile(path).schema_arrow.names
        blocklist.check_columns(names, str(parquet))
        table = pq.read_table(path, columns=["key", *[k for k in IMAGE_HASHES if blocklist.keys[k]]])
        kinds = blocklist.matches(table)
        for position in np.flatnonzero(kinds != ""):
            blocked[(shard, table["key"][int(position)].as_py())] = kinds[position]
    return blocked


def _metadata_sha256(folder: Path) -> str | None:
    record = folder / "metadata.infos.json"
    return json.loads(record.read_text())["file_sha256"]["metadata.arrow"] if record.exists() else None


def read_takedowns(folder: Path | str) -> np.ndarray:
    """The index folder's taken-down ids (sorted), none where it has no takedowns. Refused when they were matched
    against other metadata than the folder's: its ids may name other rows now."""
    folder = Path(folder)
    path, record = folder / TAKEDOWNS, folder / "takedowns.infos.json"
    if not record.exists():
        return np.empty(0, np.int64)
    if json.loads(record.read_text()).get("metadata_sha256") != _metadata_sha256(folder):
        raise ClipflowError(
            f"{path} was matched against an earlier metadata.arrow, whose ids may name other rows: run the workflow "
            f"with its blocklist to match it again (or delete {path.name} and {record.name} to lift the takedowns)"
        )
    try:
        return np.sort(np.load(path).astype(np.int64))
    except (OSError, ValueError) as error:
        raise ClipflowError(f"{path}: damaged ({error}); the next workflow run writes it again") from None
