from clipflow import files
from clipflow.curate.filters import run_filter
from clipflow.embed import embedding_files
from clipflow.shards import listed_shards
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    modality = snakemake.params.modality  # the embeddings the filter reads besides the pool, if any
    if "prepared" in snakemake.input.keys():  # the result of the filter's own jobs stands for the embeddings
        arrays = [snakemake.input.prepared]
    else:
        arrays = (
            embedding_files(*listed_shards(snakemake.input.chunks, (f"{modality}/*",)), modality) if modality else []
        )
    info = run_filter(snakemake.params.options, snakemake.input.pool, arrays, snakemake.output.table)
    files.write_json(snakemake.output.info, info)
