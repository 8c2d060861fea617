from pathlib import Path

from clipflow.curate.near_duplicate_jobs import read_layout, write_pairs
from clipflow.logs import redirect_to_log
from clipflow.shards import listed

with redirect_to_log(snakemake.log[0]):
    write_pairs(
        [Path(record).parent for record in listed(snakemake.input.assignments)],
        read_layout(snakemake.input.layout),
        int(snakemake.wildcards.group),
        snakemake.params.groups,
        snakemake.params.threshold,
        dict(snakemake.output.items()),
    )
