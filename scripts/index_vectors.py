from pathlib import Path

from clipflow.bulk import job_cache
from clipflow.embed import embedding_files
from clipflow.shards import listed, listed_shards
from clipflow.index.vectors import write_manifest
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    manifest = Path(snakemake.output.manifest)
    folder, shards = listed_shards(snakemake.input.chunks)  # the embeddings folder, the pool's shards
    embeddings = embedding_files(folder, shards, snakemake.wildcards.modality)
    # Files on bulk storage are not fetched: their row counts come from their headers, a ranged read each.
    with job_cache(listed(snakemake.input.chunks), snakemake.config) as cache:
        rows = write_manifest(embeddings, manifest.parent, manifest, cache)
    print(f"{rows} vectors in {len(embeddings)} files")
