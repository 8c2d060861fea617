from pathlib import Path

from clipflow.index.vectors import write_manifest
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    manifest = Path(snakemake.output.manifest)
    rows = write_manifest(snakemake.params.embeddings, manifest.parent, manifest)
    print(f"{rows} vectors in {len(snakemake.params.embeddings)} files")
