import logging

from clipflow.curate.near_duplicate_jobs import read_layout, write_decisions
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    layout = read_layout(snakemake.input.layout)
    dropped = write_decisions(
        [{"pairs": pairs, "bounds": bounds} for pairs, bounds in zip(snakemake.input.pairs, snakemake.input.bounds)],
        layout,
        snakemake.output.duplicate_of,
    )
    logging.info("near-duplicates: %d of %d rows removed (%d clusters)", dropped, layout["rows"], layout["clusters"])
