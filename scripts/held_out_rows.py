import pyarrow as pa

from clipflow import files
from clipflow.curate.filters import TABLE_SCHEMA
from clipflow.curate.pool import POOL_ROWS, pool_batches
from clipflow.evaluate.holdout import holdout_table
from clipflow.logs import redirect_to_log

# A row group of the pool at a time, written as the filters' tables are: the job's memory does not grow with the pool.
with redirect_to_log(snakemake.log[0]):
    held, rows = 0, 0
    with files.RowGroupWriter(snakemake.output.table, TABLE_SCHEMA, POOL_ROWS) as writer:
        for group in pool_batches(snakemake.input.pool, ["uid", "key"]):
            table = holdout_table(group, snakemake.params.fraction)
            held, rows = held + int((~table["keep"]).sum()), rows + len(table)
            writer.write(pa.Table.from_pandas(table, TABLE_SCHEMA, preserve_index=False))
    print(f"{held} of {rows} rows held out")
