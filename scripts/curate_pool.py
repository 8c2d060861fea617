from clipflow.logs import redirect_to_log
from clipflow.subset import build_pool

with redirect_to_log(snakemake.log[0]):
    pool = build_pool(snakemake.input.metadata, snakemake.input.image, snakemake.input.text, snakemake.params.parquets)
    pool.to_parquet(snakemake.output.pool, index=False)
