import pandas as pd

from clipflow import files
from clipflow.evaluate.holdout import holdout_table
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    pool = pd.read_parquet(snakemake.input.pool, columns=["uid", "key"])
    table = holdout_table(pool, snakemake.params.fraction)
    print(f"{int((~table['keep']).sum())} of {len(pool)} rows held out")
    files.write_parquet(table, snakemake.output.table)
