from clipflow.logs import redirect_to_log
from clipflow.model import fetch_model

with redirect_to_log(snakemake.log[0]):
    fetch_model(snakemake.params.embed, snakemake.output.manifest)
