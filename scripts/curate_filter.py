import pandas as pd

from clipflow import files
from clipflow.curate.filters import run_filter
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    pool = pd.read_parquet(snakemake.input.pool)
    table, info = run_filter(snakemake.params.options, pool, snakemake.params.embeddings)
    files.write_parquet(table, snakemake.output.table)
    files.write_json(snakemake.output.info, info)
