from pathlib import Path

import numpy as np

from clipflow.bulk import job_cache
from clipflow.curate.near_duplicate_jobs import read_layout, write_assignment
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    record = Path(snakemake.params.embeddings, "info", f"{snakemake.wildcards.chunk}.json")  # the chunk's record
    with job_cache([record], snakemake.config) as cache:
        write_assignment(
            snakemake.params.embeddings,
            snakemake.params.shards,
            snakemake.params.modality,
            read_layout(snakemake.input.layout),
            np.load(snakemake.input.centroids),
            dict(snakemake.output.items()),
            cache,
        )
