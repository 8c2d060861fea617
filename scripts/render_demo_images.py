from clipflow.demo import render_images
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    render_images(snakemake.output.images, snakemake.params.images)
