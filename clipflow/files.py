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


def unified_schema(parquets) -> pa.Schema:
    """The schema that the tables of all `parquets` fit: a column some lack, or that holds only nulls in some, takes
    the type the others give it."""
    schemas = [pq.read_schema(path) for path in parquets]
    return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])


def fitted(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns, in its order and types: the columns it lacks are nulls."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


class RowGroupWriter:
    """A parquet file written as tables arrive, in row groups of `rows` rows (the last may hold fewer), so that a
    job streaming a large table holds one row group, and tables streamed from the same input line up group by
    group. Replaces `path` only when the block finishes."""

    def __init__(self, path: Path | str, schema: pa.Schema, rows: int):
        self._replacing = replacing(path)
        self._writer = pq.ParquetWriter(self._replacing.__enter__(), schema)
        self.schema, self.rows, self.written = schema, rows, 0
        self._pending: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        pending = sum(t.num_rows for t in self._pending)
        if pending >= self.rows:
            joined = pa.concat_tables(self._pending)
            whole = pending // self.rows * self.rows
            self._writer.write_table(joined.slice(0, whole), row_group_size=self.rows)
            self.written += whole
            self._pending = [joined.slice(whole)]

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None and any(t.num_rows for t in self._pending):
            rest = pa.concat_tables(self._pending)
            self._writer.write_table(rest, row_group_size=self.rows)
            self.written += rest.num_rows
        self._writer.close()
        return self._replacing.__exit__(kind, value, traceback)


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def written_record(paths, relative_to: Path | str) -> dict:
    """What a job's record keeps of the files it wrote, by their paths relative to `relative_to`: their sizes
    (what the start of a run and every reader compare: a stat) and their sha256 (what clipflow verify compares)."""
    return {
        "file_sizes": sizes(paths, relative_to),
        "file_sha256": {Path(path).relative_to(relative_to).as_posix(): sha256_file(path) for path in paths},
    }


def record_damage(record: dict, relative_to: Path | str, deep: bool = False) -> list[str]:
    """What is wrong with the files a `written_record` lists: missing, another size, or (with `deep`) another
    sha256 (where the record has one: records of embeddings written before sha256s were kept list sizes only)."""
    problems = []
    for name, size in record.get("file_sizes", {}).items():
        path = Path(relative_to) / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{path}: {path.stat().st_size} bytes, {size} were written")
        elif deep and name in record.get("file_sha256", {}) and sha256_file(path) != record["file_sha256"][name]:
            problems.append(f"{path}: its sha256 is not the one written")
    return problems


def sizes(paths, relative_to: Path | str) -> dict[str, int]:
    """Each file's size in bytes by its path relative to `relative_to`: what a job's record lists of the files
    it wrote, for clipflow.workflow.reopen_incomplete to compare."""
    return {Path(path).relative_to(relative_to).as_posix(): os.path.getsize(path) for path in paths}
