from clipflow.embedder import embed_chunk
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    embed_chunk(
        snakemake.params.tars,
        snakemake.input.manifest,
        snakemake.params.options,
        snakemake.params.kept_columns,
        snakemake.output,
    )
