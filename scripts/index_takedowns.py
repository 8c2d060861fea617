from pathlib import Path

from clipflow.bulk import job_cache
from clipflow.index.takedowns import write_takedowns
from clipflow.logs import redirect_to_log
from clipflow.shards import listed, recorded_shards, rows_path

with redirect_to_log(snakemake.log[0]):
    batches = listed(snakemake.input.batches) if "batches" in snakemake.input.keys() else []
    folder, shards = recorded_shards(batches) if batches else (None, [])
    with job_cache(batches, snakemake.config) as cache:
        write_takedowns(
            snakemake.params.entries,
            Path(snakemake.output.ids).parent,
            [(shard, rows_path(folder, shard)) for shard in shards],
            snakemake.output.rows,
            snakemake.output.audit,
            cache,
        )
