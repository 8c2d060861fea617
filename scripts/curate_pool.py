from clipflow import files
from clipflow.curate.pool import build_pool
from clipflow.curate.scores import SCORE_COLUMNS
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    pool = build_pool(
        snakemake.params.metadata,
        snakemake.params.image,
        snakemake.params.text,
        snakemake.params.parquets,
        snakemake.params.plan_shards,
        snakemake.params.metadata_cols,
        {key: snakemake.input.get(key) for key in SCORE_COLUMNS},
    )
    files.write_parquet(pool, snakemake.output.pool)
