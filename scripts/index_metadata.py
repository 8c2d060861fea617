from clipflow.bulk import job_cache
from clipflow.embed import embedding_files
from clipflow.shards import listed, listed_shards
from clipflow.index.folder import write_metadata
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    folder, shards = listed_shards(snakemake.input.chunks)  # the embeddings folder, the pool's shards
    with job_cache(listed(snakemake.input.chunks), snakemake.config) as cache:
        parquets = embedding_files(folder, shards, "metadata")
        write_metadata(parquets, snakemake.output.metadata, snakemake.input.manifest, cache)
