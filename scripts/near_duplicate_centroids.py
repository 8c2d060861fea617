from clipflow.bulk import job_cache
from clipflow.curate.near_duplicate_jobs import write_centroids
from clipflow.logs import redirect_to_log
from clipflow.shards import listed, listed_shards

with redirect_to_log(snakemake.log[0]):
    folder, shards = listed_shards(snakemake.input.chunks)
    with job_cache(listed(snakemake.input.chunks), snakemake.config) as cache:
        write_centroids(
            folder, shards, snakemake.params.options, snakemake.output.centroids, snakemake.output.layout, cache
        )
