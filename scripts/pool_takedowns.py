from clipflow.curate.takedowns import write_pool_takedowns
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    down = write_pool_takedowns(snakemake.input.pool, snakemake.input.rows, snakemake.output.table)
    print(f"{down} pool rows taken down")
