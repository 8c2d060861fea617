from pathlib import Path

from clipflow.curate.subset import removed_for
from clipflow.download.batch import download_batch
from clipflow.ingest.planner import plan_shard_path
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    shards = snakemake.params.shards
    download_batch(
        [plan_shard_path(Path(snakemake.input.plan).parent, shard) for shard in shards],
        Path(snakemake.output.record).parent.parent,
        snakemake.params.options,
        snakemake.params.kept_columns,
        snakemake.output.record,
        threads=snakemake.config["download"]["threads"],
        filtered=removed_for(snakemake.input.subset, shards) if snakemake.input.get("subset") else None,
        bulk=snakemake.config["storage"]["bulk"],
    )
