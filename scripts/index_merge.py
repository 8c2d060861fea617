import faiss

from clipflow.index.builder import merge_parts
from clipflow.logs import redirect_to_log
from clipflow.shards import listed

with redirect_to_log(snakemake.log[0]):
    faiss.omp_set_num_threads(snakemake.threads)
    merge_parts(
        snakemake.input.trained,
        snakemake.input.trained_infos,
        listed(snakemake.input.parts),
        snakemake.output.index,
        snakemake.output.infos,
        {"max_index_query_time_ms": snakemake.params.max_index_query_time_ms},
    )
