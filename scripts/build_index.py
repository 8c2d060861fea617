import faiss

from clipflow.embed import embedding_files
from clipflow.shards import listed_shards
from clipflow.index.builder import build_index
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    faiss.omp_set_num_threads(snakemake.threads)
    folder, shards = listed_shards(snakemake.input.chunks)  # the embeddings folder, the pool's shards
    build_index(
        embedding_files(folder, shards, snakemake.wildcards.modality),
        snakemake.output.index,
        snakemake.output.infos,
        snakemake.params.options,
        memory_available=f"{snakemake.resources.mem_mb}M",
    )
