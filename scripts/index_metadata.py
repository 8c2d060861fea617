import shutil

from clipflow.logs import redirect_to_log
from clipflow.searcher import write_metadata

with redirect_to_log(snakemake.log[0]):
    write_metadata(snakemake.input.metadata, snakemake.output.metadata)
    shutil.copyfile(snakemake.input.manifest, snakemake.output.manifest)
