from pathlib import Path

import numpy as np

from clipflow.bulk import fetch
from clipflow.curate.near_duplicate_jobs import read_layout, write_assignment
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    # The chunk's embeddings, where they are kept on bulk storage (its record: info/ in the embeddings folder).
    fetch(
        [Path(snakemake.params.embeddings, "info", f"{snakemake.wildcards.chunk}.json")],
        (f"{snakemake.params.modality}/*",),
    )
    write_assignment(
        snakemake.params.embeddings,
        snakemake.params.shards,
        snakemake.params.modality,
        read_layout(snakemake.input.layout),
        np.load(snakemake.input.centroids),
        dict(snakemake.output.items()),
    )
