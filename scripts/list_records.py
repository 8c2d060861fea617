from clipflow.logs import redirect_to_log
from clipflow.shards import write_listing

with redirect_to_log(snakemake.log[0]):
    write_listing(snakemake.input.records, snakemake.output.listing)
