import faiss

from clipflow.embed import embedding_files
from clipflow.index.builder import add_part
from clipflow.logs import redirect_to_log
from clipflow.shards import recorded_shards

with redirect_to_log(snakemake.log[0]):
    faiss.omp_set_num_threads(snakemake.threads)
    folder, shards = recorded_shards([snakemake.input.chunk], (f"{snakemake.wildcards.modality}/*",))
    added = add_part(
        snakemake.input.trained, embedding_files(folder, shards, snakemake.wildcards.modality), snakemake.output.part
    )
    print(f"{added} vectors of {len(shards)} shards added")
