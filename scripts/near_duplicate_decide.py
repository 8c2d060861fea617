import logging

from clipflow.curate.near_duplicate_jobs import read_layout, write_decisions
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    layout = read_layout(snakemake.input.layout)
    pairs = snakemake.input.pairs
    dropped = write_decisions(
        [{"pairs": path, "bounds": bounds} for path, bounds in zip(pairs[::2], pairs[1::2])],
        layout,
        snakemake.output.duplicate_of,
    )
    logging.info("near-duplicates: %d of %d rows removed (%d clusters)", dropped, layout["rows"], layout["clusters"])
