import faiss

from clipflow.embed import embedding_files
from clipflow.index.builder import train_index
from clipflow.logs import redirect_to_log
from clipflow.shards import listed_shards

with redirect_to_log(snakemake.log[0]):
    faiss.omp_set_num_threads(snakemake.threads)
    # The embeddings folder (with this modality's files, where they are on bulk storage), the training chunks' shards.
    folder, shards = listed_shards(snakemake.input.chunks, (f"{snakemake.wildcards.modality}/*",))
    train_index(
        embedding_files(folder, shards, snakemake.wildcards.modality),
        snakemake.params.rows,
        snakemake.params.options,
        snakemake.output.index,
        snakemake.output.infos,
    )
