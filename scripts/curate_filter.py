from clipflow import files
from clipflow.bulk import job_cache
from clipflow.curate.filters import run_filter
from clipflow.embed import embedding_files
from clipflow.index.vectors import StoredVectors
from clipflow.shards import listed, listed_shards
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    modality = snakemake.params.modality  # the embeddings the filter reads besides the pool, if any
    records = listed(snakemake.input.chunks) if "chunks" in snakemake.input.keys() else []
    with job_cache(records, snakemake.config) as cache:
        if "prepared" in snakemake.input.keys():  # the result of the filter's own jobs stands for the embeddings
            arrays = StoredVectors.of([snakemake.input.prepared])
        elif modality:
            arrays = StoredVectors.of(embedding_files(*listed_shards(snakemake.input.chunks), modality), cache)
        else:
            arrays = None
        info = run_filter(snakemake.params.options, snakemake.input.pool, arrays, snakemake.output.table)
    files.write_json(snakemake.output.info, info)
