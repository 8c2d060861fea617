"""Ingest: find the metadata files and read them as batches of (url, caption, uid, kept columns)."""

import glob
import os
from dataclasses import dataclass
from typing import Iterator

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from clipflow.errors import ClipflowError
from clipflow.files import sha256_file
from clipflow.ingest.keys import key_to_uid, row_keys

BATCH_ROWS = 100_000
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

    @classmethod
    def from_config(cls, input_config: dict) -> "Columns":
        return cls(
            url=input_config["url_col"],
            caption=input_config["caption_col"],
            uid=input_config["uid_col"],
            keep=tuple(input_config["keep_cols"]),
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


def _raw_batches(source: Source, columns: Columns) -> Iterator[pd.DataFrame]:
    if source.format == "parquet":
        with fsspec.open(source.path, "rb") as f:
            parquet = pq.ParquetFile(f)
            present = parquet.schema_arrow.names
            _check_columns(source, columns, present)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns.wanted()):
                yield batch.to_pandas()
        return
    with fsspec.open(source.path, "rb", compression="infer") as f:
        if source.format in ("csv", "tsv"):
            chunks = pd.read_csv(
                f,
                sep="," if source.format == "csv" else "\t",
                dtype=str,
                keep_default_na=False,
                chunksize=BATCH_ROWS,
                encoding_errors="replace",
            )
        elif source.format == "jsonl":
            chunks = pd.read_json(f, lines=True, dtype=False, chunksize=BATCH_ROWS, encoding_errors="replace")
        else:  # txt: one URL a line
            chunks = pd.read_csv(
                f,
                names=["url"],
                dtype=str,
                keep_default_na=False,
                chunksize=BATCH_ROWS,
                encoding_errors="replace",
                sep="\x01",
                quoting=3,
            )
        for chunk in chunks:
            _check_columns(source, columns, list(chunk.columns))
            yield chunk


def _check_columns(source: Source, columns: Columns, present: list[str]) -> None:
    roles = {"input.url_col": columns.url, "input.caption_col": columns.caption, "input.uid_col": columns.uid}
    roles.update({f"input.keep_cols[{i}]": c for i, c in enumerate(columns.keep)})
    for key, column in roles.items():
        if column is not None and column not in present:
            hint = (
                " (set input.caption_col: null for a data set without captions)" if key == "input.caption_col" else ""
            )
            raise ClipflowError(f"{source.path}: no column {column!r} for {key}; its columns are {present}{hint}")


def _text(values: pd.Series) -> pd.Series:
    """Strings with missing values as ''; bytes decoded leniently so a bad caption never loses its row."""
    return values.map(
        lambda v: "" if v is None or v != v else v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    )


def read_batches(source: Source, columns: Columns) -> Iterator[pd.DataFrame]:
    """Yield (batch, keys): url, caption, uid, the kept columns and source_row (0-based row in the file),
    with each row's (url, caption) key."""
    first_row = 0
    try:
        for raw in _raw_batches(source, columns):
            batch = pd.DataFrame(index=range(len(raw)))
            batch["url"] = _text(raw[columns.url]).str.strip().to_numpy()
            batch["caption"] = _text(raw[columns.caption]).to_numpy() if columns.caption else ""
            keys = row_keys(batch["url"], batch["caption"])
            if columns.uid:
                batch["uid"] = _text(raw[columns.uid]).to_numpy()
                empty = (batch["uid"] == "").to_numpy().nonzero()[0]
                if len(empty):
                    raise ClipflowError(
                        f"{source.path}: row {first_row + empty[0]} has an empty uid in column {columns.uid!r}"
                    )
            else:
                batch["uid"] = [key_to_uid(k) for k in keys]
            for column in columns.keep:
                batch[column] = raw[column].to_numpy()
            batch["source_row"] = range(first_row, first_row + len(raw))
            first_row += len(raw)
            yield batch, keys
    except ClipflowError:
        raise
    except Exception as error:  # a parser's message alone does not say which file it was reading
        raise ClipflowError(f"{source.path}: cannot read as {source.format}: {error}") from error
