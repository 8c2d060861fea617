from pathlib import Path

from clipflow.embed import embedding_files
from clipflow.shards import listed_shards
from clipflow.index.vectors import write_manifest
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    manifest = Path(snakemake.output.manifest)
    # The embeddings folder (with this modality's files, where they are on bulk storage), the pool's shards.
    folder, shards = listed_shards(snakemake.input.chunks, (f"{snakemake.wildcards.modality}/*",))
    embeddings = embedding_files(folder, shards, snakemake.wildcards.modality)
    rows = write_manifest(embeddings, manifest.parent, manifest)
    print(f"{rows} vectors in {len(embeddings)} files")
