from pathlib import Path

from clipflow.embed import embedding_files
from clipflow.index.vectors import write_manifest
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    manifest = Path(snakemake.output.manifest)
    embeddings = embedding_files(snakemake.input.chunks, snakemake.wildcards.modality)
    rows = write_manifest(embeddings, manifest.parent, manifest)
    print(f"{rows} vectors in {len(embeddings)} files")
