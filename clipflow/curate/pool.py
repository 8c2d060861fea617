"""The pool that curation works on: every embedded row (with embed.precomputed, every planned row), with its
image-text similarity, the original image size (the metadata's when input.metadata_cols has it, else the one the
download recorded), input.metadata_cols, and the configured heads' scores (aesthetic_score, punsafe). Pool row i
is index id i (shards in order, rows in key order).

It is built shard by shard and written in row groups of POOL_ROWS: the curation jobs read it a row group at a time,
so that none holds the pool (1.28B rows of DataComp-large are ~250 GB in pandas)."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipflow import files
from clipflow.bulk import Cache
from clipflow.curate.scores import head_scores, load_heads
from clipflow.embed.summary import pair_similarities
from clipflow.errors import ClipflowError
from clipflow.index.vectors import StoredVectors
from clipflow.shards import SIZE_COLUMNS, plan_keys

POOL_ROWS = 100_000  # rows in a row group of the pool and of each filter's table: what a curation job holds


def write_pool(
    shards: list[dict], metadata_cols, score_models: dict, path: Path | str, cache: Cache | None = None
) -> int:
    """The pool of `shards` (each: its embeddings' metadata, image and text paths, its plan parquet, and its
    download's parquet or None; those on bulk storage read through `cache`), in their order, as one parquet file;
    returns its row count. Shards are staged a row group's worth at a time beside `path`, then written with the
    schema they all fit."""
    local = cache.local if cache else Path
    heads = load_heads(score_models)
    staging = Path(f"{path}.parts")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    parts, pending, empty = [], [], None

    def stage():
        if pending:
            parts.append(staging / f"{len(parts):08d}.parquet")
            pq.write_table(pa.concat_tables(pending, promote_options="permissive"), parts[-1])
            pending.clear()

    for shard in shards:
        paths = {name: value if value is None else local(value) for name, value in shard.items()}
        rows = shard_pool(**paths, metadata_cols=metadata_cols, heads=heads)
        table = pa.Table.from_pandas(rows, preserve_index=False).replace_schema_metadata(None)
        if rows.empty:  # a shard none of whose images downloaded: its columns may have no types
            empty = table
            continue
        pending.append(table)
        if sum(table.num_rows for table in pending) >= POOL_ROWS:
            stage()
    if not parts and not pending and empty is not None:  # an empty pool still has its columns
        pending.append(empty)
    stage()
    schema = files.unified_schema(parts)
    with files.RowGroupWriter(path, schema, POOL_ROWS) as writer:
        for part in parts:
            writer.write(files.fitted(pq.read_table(part), schema))
    shutil.rmtree(staging)
    return writer.written


def shard_pool(metadata, image, text, plan, download, metadata_cols, heads: dict) -> pd.DataFrame:
    """One shard's pool rows."""
    pool = pd.read_parquet(metadata)
    pool["clip_score"] = pair_similarities([image], [text])
    for column, scores in head_scores(heads, image).items():
        pool[column] = scores
    from_plan = [column for column in metadata_cols if column not in pool.columns]
    if from_plan:  # embedded from the downloads: the metadata columns come from the plan, by key
        pool = pool.merge(_plan_columns(plan, from_plan), on="key", how="left", validate="one_to_one")
    sizes = [column for column in SIZE_COLUMNS if column not in pool.columns]
    if sizes and download:
        downloaded = pd.read_parquet(download, columns=["key", *sizes]).dropna(subset=sizes)
        pool = pool.merge(downloaded, on="key", how="left", validate="one_to_one")
    return pool


def _plan_columns(plan_parquet, columns: list[str]) -> pd.DataFrame:
    rows = pd.read_parquet(plan_parquet, columns=columns)
    rows.insert(0, "key", plan_keys(Path(plan_parquet).stem, len(rows)))
    return rows


def pool_batches(path: Path | str, columns: list[str] | None = None):
    """The pool's row groups in order, as pandas frames of `columns` (all when None) indexed by pool row."""
    pool = pq.ParquetFile(path)
    start = 0
    for group in range(pool.num_row_groups):
        rows = pool.read_row_group(group, columns=columns).to_pandas()
        rows.index = pd.RangeIndex(start, start + len(rows))
        start += len(rows)
        yield rows


def pool_batches_with(path: Path | str, arrays: StoredVectors | None, reader: str, columns: list[str] | None = None):
    """The pool's row groups (as pool_batches) each with the same rows of `arrays` (the per-shard .npy files in
    pool order; None when there are none), refusing arrays that do not hold the pool's rows: `reader` names what
    reads them."""
    rows = 0
    for group in pool_batches(path, columns):
        if arrays is not None and len(arrays) < rows + len(group):
            raise ClipflowError(f"{reader}: its arrays hold {len(arrays)} rows, the pool more")
        yield group, arrays.between(rows, rows + len(group)) if arrays is not None else None
        rows += len(group)
    if arrays is not None and len(arrays) != rows:
        raise ClipflowError(f"{reader}: its arrays hold {len(arrays)} rows, the pool {rows}")
