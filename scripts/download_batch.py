from pathlib import Path

from clipflow.curate.subset import removed_for
from clipflow.download.batch import download_batch
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    shards = [Path(path).stem for path in snakemake.input.shards]
    download_batch(
        snakemake.input.shards,
        Path(snakemake.output.record).parent.parent,
        snakemake.params.options,
        snakemake.params.kept_columns,
        snakemake.output.record,
        threads=snakemake.config["download"]["threads"],
        filtered=removed_for(snakemake.input.subset, shards) if snakemake.input.get("subset") else None,
    )
