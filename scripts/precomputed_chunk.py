from pathlib import Path

from clipflow.bulk import publish
from clipflow.embed.precomputed import read_precomputed_chunk
from clipflow.ingest.planner import load_plan
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    read_precomputed_chunk(
        load_plan(Path(snakemake.input.plan).parent),
        snakemake.params.shards,
        snakemake.params.arrays,
        snakemake.params.columns,
        snakemake.params.model,
        Path(snakemake.output.record).parent.parent,  # the embeddings folder: records sit in info/
        snakemake.output.record,
    )
    publish(snakemake.output.record, snakemake.config["storage"]["bulk"])
