from clipflow.embed import embedding_files
from clipflow.shards import listed_shards
from clipflow.index.folder import write_metadata
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    folder, shards = listed_shards(snakemake.input.chunks, ("metadata/*",))  # the embeddings folder, the pool's shards
    write_metadata(embedding_files(folder, shards, "metadata"), snakemake.output.metadata, snakemake.input.manifest)
