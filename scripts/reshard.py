from pathlib import Path

from clipflow import files
from clipflow.bulk import job_cache
from clipflow.curate.reshard import reshard
from clipflow.logs import redirect_to_log
from clipflow.shards import listed, records_folder

with redirect_to_log(snakemake.log[0]):
    folder = Path(snakemake.output.record).parent
    batches = listed(snakemake.input.batches)
    with job_cache(batches, snakemake.config) as cache:
        record = reshard(
            snakemake.input.kept,
            records_folder(batches),
            folder,
            snakemake.params.samples_per_shard,
            snakemake.threads,
            cache,
        )
    files.write_json(snakemake.output.record, record)
