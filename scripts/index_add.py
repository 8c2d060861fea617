import faiss

from clipflow.bulk import job_cache
from clipflow.embed import embedding_files
from clipflow.index.builder import add_part
from clipflow.logs import redirect_to_log
from clipflow.shards import recorded_shards

with redirect_to_log(snakemake.log[0]):
    faiss.omp_set_num_threads(snakemake.threads)
    folder, shards = recorded_shards([snakemake.input.chunk])
    with job_cache([snakemake.input.chunk], snakemake.config) as cache:
        embeddings = embedding_files(folder, shards, snakemake.wildcards.modality)
        added = add_part(snakemake.input.trained, embeddings, snakemake.output.part, cache)
    print(f"{added} vectors of {len(shards)} shards added")
