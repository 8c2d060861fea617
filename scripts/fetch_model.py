from clipflow.embed.model import fetch_model
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    fetch_model(
        snakemake.params.model,
        snakemake.params.pretrained,
        snakemake.params.checkpoint,
        snakemake.config["embed"]["cache_dir"],
        snakemake.output.manifest,
    )
