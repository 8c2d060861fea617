"""The pool's takedowns, as a filter's table: the rows of the index's takedowns (clipflow.index.takedowns) marked
not kept, by the kind of key that named them, in the pool's row groups. Every subset applies it first, so that
`uids.npy`, `kept.parquet` and the reshards lose those rows and `removed.parquet` lists them (a download of the
subset skips them); the filters' own decisions are not recomputed: a top fraction stays the fraction of the pool
it was computed on. The job holds the rows taken down and one row group."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipflow import files
from clipflow.curate.filters import TABLE_SCHEMA
from clipflow.curate.pool import POOL_ROWS, pool_batches

TAKEDOWN = "takedown"  # its name where subsets account for their rows, as if it were their first filter


def write_pool_takedowns(pool, taken_rows, table_path) -> int:
    """The takedowns table of `pool` from `taken_rows` (the index's rows.parquet: shard, key, kind); returns how
    many pool rows it takes down."""
    taken = pq.read_table(taken_rows, columns=["shard", "key", "kind"]).to_pandas()
    kinds = dict(zip(zip(taken["shard"], taken["key"]), taken["kind"]))
    down = 0
    with files.RowGroupWriter(table_path, TABLE_SCHEMA, POOL_ROWS) as writer:
        for group in pool_batches(pool, ["shard", "key"]):
            detail = [kinds.get(place) for place in zip(group["shard"], group["key"])]
            table = pd.DataFrame(
                {"key": group["key"].to_numpy(), "keep": [kind is None for kind in detail], "detail": detail}
            )
            down += int((~table["keep"]).sum())
            writer.write(pa.Table.from_pandas(table, TABLE_SCHEMA, preserve_index=False))
    return down
