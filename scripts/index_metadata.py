import shutil

from clipflow.embed import embedding_files
from clipflow.index.folder import write_metadata
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    write_metadata(embedding_files(snakemake.input.chunks, "metadata"), snakemake.output.metadata)
    shutil.copyfile(snakemake.input.manifest, snakemake.output.manifest)
