"""Ingest: find the metadata files and read them as batches of (url, caption, uid, kept columns)."""

import glob
import json
import os
from dataclasses import dataclass
from typing import Iterator

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from clipflow.errors import ClipflowError
from clipflow.files import sha256_file
from clipflow.ingest.keys import row_keys

BATCH_ROWS = 100_000
BLOCK_BYTES = 1 << 22  # Arrow's CSV reader reads this much at a time
FORMATS_BY_EXTENSION = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".txt": "txt",
}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


@dataclass(frozen=True)
class Columns:
    """Which of the user's columns play the roles of url, caption and uid, and which others to keep."""

    url: str
    caption: str | None
    uid: str | None
    keep: tuple[str, ...]
    keep_keys: tuple[str, ...] = ()  # the config key naming each kept column, for messages
    verbatim: bool = False  # input.verbatim: captions exactly as the file holds them, control characters too

    @classmethod
    def from_config(cls, input_config: dict) -> "Columns":
        return cls(
            url=input_config["url_col"],
            caption=input_config["caption_col"],
            uid=input_config["uid_col"],
            keep=tuple(input_config["keep_cols"]) + tuple(input_config["metadata_cols"]),
            keep_keys=tuple(f"input.keep_cols[{i}]" for i in range(len(input_config["keep_cols"])))
            + tuple(f"input.metadata_cols[{i}]" for i in range(len(input_config["metadata_cols"]))),
            verbatim=input_config["verbatim"],
        )

    def wanted(self) -> list[str]:
        return [c for c in (self.url, self.caption, self.uid, *self.keep) if c is not None]


@dataclass(frozen=True)
class Source:
    path: str
    format: str
    fingerprint: str


def content_hash(path: str) -> str | None:
    """sha256 of a local file's bytes (None for remote files): tells a copied or touched file from a changed one."""
    return sha256_file(path) if _is_local(path) else None


def _is_local(path: str) -> bool:
    return fsspec.utils.get_protocol(path) in ("file", "local")


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _format_of(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    name = path.lower()
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    fmt = FORMATS_BY_EXTENSION.get(os.path.splitext(name)[1])
    if fmt is None:
        raise ClipflowError(f"{path}: cannot tell the format from the extension; set input.format")
    return fmt


def find_sources(patterns: list[str], configured_format: str = "auto") -> list[Source]:
    """Expand files, globs and fsspec URLs, in the order given (glob matches sorted), without repeats."""
    sources, seen = [], set()
    for pattern in patterns:
        fs, _ = fsspec.core.url_to_fs(pattern)
        if _is_local(pattern):
            matches = (
                sorted(glob.glob(pattern)) if _has_magic(pattern) else [pattern] if os.path.exists(pattern) else []
            )
        else:
            matches = (
                [fs.unstrip_protocol(m) for m in sorted(fs.glob(pattern))]
                if _has_magic(pattern)
                else [pattern] if fs.exists(pattern) else []
            )
        if not matches:
            raise ClipflowError(f"input.paths: {pattern!r} matches no file")
        for match in matches:
            if match in seen:
                continue
            seen.add(match)
            fs, path = fsspec.core.url_to_fs(match)
            if fs.isdir(path):
                raise ClipflowError(
                    f"{match}: is a directory; name the files or use a glob such as {match.rstrip('/')}/*.parquet"
                )
            sources.append(Source(match, _format_of(match, configured_format), str(fs.ukey(path))))
    return sources


def _raw_batches(source: Source, columns: Columns) -> Iterator[pa.Table]:
    """The wanted columns, a batch at a time, as Arrow read them (csv and jsonl text already decoded)."""
    if source.format == "parquet":
        with fsspec.open(source.path, "rb") as f:
            parquet = pq.ParquetFile(f)
            _check_columns(source, columns, parquet.schema_arrow.names)
            _check_text_types(source, columns, parquet.schema_arrow)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns.wanted()):
                yield pa.Table.from_batches([batch])
        return
    if source.format == "jsonl":
        first_row = 0
        with fsspec.open(source.path, "rb", compression="infer") as f:
            for chunk in pd.read_json(f, lines=True, dtype=False, chunksize=BATCH_ROWS, encoding_errors="replace"):
                _check_columns(source, columns, list(chunk.columns))
                _check_json_values(source, columns, chunk, first_row)
                first_row += len(chunk)
                yield pa.Table.from_pandas(chunk[columns.wanted()], preserve_index=False)
        return
    yield from _delimited_batches(source, columns)


def _delimited_batches(source: Source, columns: Columns) -> Iterator[pa.Table]:
    """csv, tsv and txt through Arrow's CSV reader: every field as bytes (pandas' C parser ends a field at a NUL
    byte), decoded as UTF-8 with replacement characters, so no character and no row is lost."""
    if source.format == "txt":  # one URL a line, nothing quoted
        read = pa_csv.ReadOptions(column_names=["url"], block_size=BLOCK_BYTES)
        parse = pa_csv.ParseOptions(delimiter="\x01", quote_char=False)
    else:
        read = pa_csv.ReadOptions(block_size=BLOCK_BYTES)
        parse = pa_csv.ParseOptions(delimiter="," if source.format == "csv" else "\t", newlines_in_values=True)
    with fsspec.open(source.path, "rb", compression="infer") as f:
        names = pa_csv.open_csv(f, read_options=read, parse_options=parse).schema.names
    _check_columns(source, columns, names)
    as_bytes = pa_csv.ConvertOptions(
        column_types={name: pa.binary() for name in names}, include_columns=columns.wanted()
    )
    with fsspec.open(source.path, "rb", compression="infer") as f:
        pending = []
        for batch in pa_csv.open_csv(f, read_options=read, parse_options=parse, convert_options=as_bytes):
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= BATCH_ROWS:
                yield _decoded(pa.Table.from_batches(pending))
                pending = []
        if pending:
            yield _decoded(pa.Table.from_batches(pending))


def _decoded(table: pa.Table) -> pa.Table:
    return pa.table({name: _text(table[name]) for name in table.column_names})


def _check_text_types(source: Source, columns: Columns, schema: pa.Schema) -> None:
    """A parquet's url, caption and uid columns hold text (strings, or bytes decoded as UTF-8)."""
    roles = {"url": columns.url, "caption": columns.caption, "uid": columns.uid}
    for role, column in roles.items():
        if column is None:
            continue
        kind = schema.field(column).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
        if not (text or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
            raise ClipflowError(
                f"{source.path}: column {column!r} (input.{role}_col) holds {kind} values; it must hold text"
            )


def _check_columns(source: Source, columns: Columns, present: list[str]) -> None:
    roles = {"input.url_col": columns.url, "input.caption_col": columns.caption, "input.uid_col": columns.uid}
    keys = columns.keep_keys or [f"input.keep_cols[{i}]" for i in range(len(columns.keep))]
    roles.update(dict(zip(keys, columns.keep)))
    for key, column in roles.items():
        if column is not None and column not in present:
            hint = (
                " (set input.caption_col: null for a data set without captions)" if key == "input.caption_col" else ""
            )
            raise ClipflowError(f"{source.path}: no column {column!r} for {key}; its columns are {present}{hint}")


def _text(column: pa.ChunkedArray) -> pa.Array:
    """Strings with missing values as ''; bytes and invalid UTF-8 decoded leniently, so that a bad caption never
    loses its row. Columns hold text, bytes or nothing (the readers' checks refuse anything else)."""
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if array.null_count == len(array):  # also a jsonl column of missing values, which pandas reads as floats
        return _empty_text(len(array))
    try:
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            array.validate(full=True)  # parquet's strings are not checked on read
        array = array.cast(pa.string())  # bytes: checked here
    except pa.ArrowInvalid:
        values = array.cast(pa.large_binary()).to_pylist()
        array = pa.array([None if v is None else v.decode("utf-8", "replace") for v in values], pa.string())
    return array.fill_null("")


def _check_json_values(source: Source, columns: Columns, raw: pd.DataFrame, first_row: int) -> None:
    """A jsonl batch's url, caption and uid values are text or missing, not numbers or lists: name the first
    that is not, with its row and line."""
    for role, column in (("url", columns.url), ("caption", columns.caption), ("uid", columns.uid)):
        if column is None:
            continue
        bad = raw[column].map(
            lambda v: not (v is None or isinstance(v, (str, bytes)) or (isinstance(v, float) and v != v))
        )
        positions = bad.to_numpy().nonzero()[0]
        if len(positions):
            value = raw[column].iloc[positions[0]]
            raise ClipflowError(
                f"{source.path}: {_jsonl_place(source, first_row + int(positions[0]))}: column {column!r} "
                f"(input.{role}_col) holds {value!r}, a {type(value).__name__}; it must hold text"
            )


# C0 and C1 control characters but tab, newline and carriage return, and DEL: in a caption each becomes a
# space, before the dedup key is computed, so the key sees the stored text and no tool truncates it at a NUL
# (unless input.verbatim keeps the captions as DataComp's baselines read them).
CONTROL_CHARACTERS = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"


def clean_caption(captions: pa.Array) -> pa.Array:
    """Captions with their control characters as spaces. Arrow's regex kernel runs only on a batch whose bytes
    hold one: most batches hold none, and finding that out is ~3x cheaper than the replacement."""
    data = captions.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    if len(raw) == 0 or (raw.min() >= 0x20 and raw.max() < 0x7F):  # printable ASCII
        return captions
    c0 = (raw < 0x20) & (raw != 0x09) & (raw != 0x0A) & (raw != 0x0D) | (raw == 0x7F)
    c1 = (raw[:-1] == 0xC2) & (raw[1:] >= 0x80) & (raw[1:] <= 0x9F)  # U+0080..U+009F in UTF-8
    if not (c0.any() or c1.any()):
        return captions
    return pc.replace_substring_regex(captions, CONTROL_CHARACTERS, " ")


def read_batches(source: Source, columns: Columns) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Yield (batch, keys): url, caption, uid, the kept columns and source_row (0-based row in the file),
    with each row's (url, caption) key."""
    first_row = 0
    try:
        for raw in _raw_batches(source, columns):
            rows = raw.num_rows
            url = pc.utf8_trim_whitespace(_text(raw[columns.url]))
            caption = _text(raw[columns.caption]) if columns.caption else _empty_text(rows)
            if not columns.verbatim:
                caption = clean_caption(caption)
            keys, derived_uids = row_keys(url, caption)
            if columns.uid:
                uid = _text(raw[columns.uid])
                empty = np.flatnonzero(pc.equal(uid, "").to_numpy(zero_copy_only=False))
                if len(empty):
                    raise ClipflowError(
                        f"{source.path}: row {first_row + empty[0]} has an empty uid in column {columns.uid!r}"
                    )
            else:
                uid = derived_uids
            batch = {"url": url, "caption": caption, "uid": uid}
            batch.update((column, raw[column]) for column in columns.keep)
            batch["source_row"] = pa.array(np.arange(first_row, first_row + rows, dtype=np.int64))
            first_row += rows
            yield pa.table(batch), keys
    except ClipflowError:
        raise
    except Exception as error:  # a parser's message alone does not say which file, or which line
        where = ""
        if source.format == "jsonl":
            where = _first_bad_line(source)
        elif source.format in ("csv", "tsv"):
            where = _first_bad_record(source)
        raise ClipflowError(f"{source.path}: cannot read as {source.format}{where}: {error}") from error


def _empty_text(rows: int) -> pa.Array:
    return pa.nulls(rows, pa.string()).fill_null("")


def _jsonl_place(source: Source, row: int) -> str:
    """Where data row `row` (0-based, as source_row) of a jsonl file is: its row and its line."""
    with fsspec.open(source.path, "rt", compression="infer", encoding="utf-8", errors="replace") as f:
        rows = -1
        for number, line in enumerate(f, start=1):
            rows += bool(line.strip())
            if rows == row:
                return f"row {row} (line {number})"
    return f"row {row}"


def _first_bad_record(source: Source) -> str:
    """' at line N' for the first record of a csv or tsv file whose field count is not its header's ('' if none
    is): Arrow's parser does not say where, and a quoted field may span lines."""
    import csv

    with fsspec.open(source.path, "rt", compression="infer", encoding="utf-8", errors="replace", newline="") as f:
        records = csv.reader(f, delimiter="," if source.format == "csv" else "\t")
        header, start = next(records, []), 2
        for record in records:
            if record and len(record) != len(header):
                return f" at line {start} ({len(record)} fields, the header has {len(header)})"
            start = records.line_num + 1
    return ""


def _first_bad_line(source: Source) -> str:
    """' at line N' for the first line of a jsonl file that is not a JSON object ('' if none is found)."""
    with fsspec.open(source.path, "rt", compression="infer", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return f" at line {number} (not a JSON object)"
            except ValueError:
                return f" at line {number}"
    return ""
