import pyarrow as pa
import pyarrow.parquet as pq

from clipflow import files
from clipflow.evaluate.holdout import holdout_table
from clipflow.logs import redirect_to_log

# A batch of the pool at a time: the job's memory does not grow with the pool.
with redirect_to_log(snakemake.log[0]):
    held, rows = 0, 0
    with files.replacing(snakemake.output.table) as tmp:
        writer = None
        for batch in pq.ParquetFile(snakemake.input.pool).iter_batches(batch_size=1_000_000, columns=["uid", "key"]):
            table = holdout_table(batch.to_pandas(), snakemake.params.fraction)
            held, rows = held + int((~table["keep"]).sum()), rows + len(table)
            arrow = pa.Table.from_pandas(table, preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp, arrow.schema)
            writer.write_table(arrow)
        writer.close()
    print(f"{held} of {rows} rows held out")
