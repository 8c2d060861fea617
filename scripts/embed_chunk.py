from pathlib import Path

from clipflow.bulk import fetch, publish
from clipflow.embed.embedder import embed_chunk
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    options = snakemake.config["embed"]
    # The chunk's shards, where they are kept on bulk storage; the copies go once the chunk is embedded.
    fetched = fetch(snakemake.input.batches, tuple(f"{Path(tar).stem}*" for tar in snakemake.params.tars))
    embed_chunk(
        snakemake.params.tars,
        snakemake.input.manifest,
        Path(snakemake.output.record).parent.parent,  # the embeddings folder: records sit in info/
        snakemake.output.record,
        snakemake.params.kept_columns,
        snakemake.params.precision,
        device=options["device"],
        batch_size=options["batch_size"],
        workers=min(options["workers"], snakemake.threads),
    )
    publish(snakemake.output.record, snakemake.config["storage"]["bulk"])
    for path in fetched:
        path.unlink()
