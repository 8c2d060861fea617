from clipflow.indexer import build_index
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    build_index(snakemake.input.embeddings, snakemake.output.index, snakemake.output.infos, snakemake.params.options)
