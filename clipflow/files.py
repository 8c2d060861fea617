"""Writing outputs so that a killed job never leaves a half-written file, and checksums of files."""

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def replacing(path: Path | str):
    """Yields a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path | str, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path | str, value) -> None:
    write_text(path, json.dumps(value, indent=1))


def write_parquet(frame, path: Path | str, **options) -> None:
    """A pandas frame (or an Arrow table) as parquet; `options` go to pyarrow's write_table."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    with replacing(path) as tmp:
        pq.write_table(table, tmp, **options)


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def sizes(paths, relative_to: Path | str) -> dict[str, int]:
    """Each file's size in bytes by its path relative to `relative_to`: what a job's record lists of the files
    it wrote, for clipflow.workflow.reopen_incomplete to compare."""
    return {Path(path).relative_to(relative_to).as_posix(): os.path.getsize(path) for path in paths}
