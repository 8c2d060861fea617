import faiss

from clipflow.bulk import job_cache
from clipflow.embed import embedding_files
from clipflow.index.builder import train_index
from clipflow.logs import redirect_to_log
from clipflow.shards import listed, listed_shards

with redirect_to_log(snakemake.log[0]):
    faiss.omp_set_num_threads(snakemake.threads)
    folder, shards = listed_shards(snakemake.input.chunks)  # the embeddings folder, the training chunks' shards
    with job_cache(listed(snakemake.input.chunks), snakemake.config) as cache:
        train_index(
            embedding_files(folder, shards, snakemake.wildcards.modality),
            snakemake.params.rows,
            snakemake.params.options,
            snakemake.output.index,
            snakemake.output.infos,
            cache,
        )
