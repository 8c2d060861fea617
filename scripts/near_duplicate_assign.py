import numpy as np

from clipflow.curate.near_duplicate_jobs import read_layout, write_assignment
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    write_assignment(
        snakemake.params.embeddings,
        snakemake.params.shards,
        snakemake.params.modality,
        read_layout(snakemake.input.layout),
        np.load(snakemake.input.centroids),
        dict(snakemake.output.items()),
    )
