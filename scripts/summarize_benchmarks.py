from pathlib import Path

from clipflow.logs import redirect_to_log
from clipflow.benchmarks import plot_benchmarks, read_benchmarks
from clipflow.status import record_status, status_page

with redirect_to_log(snakemake.log[0]):
    table = read_benchmarks(snakemake.input.benchmarks)
    table.to_csv(snakemake.output.table, sep="\t", index=False)
    plot_benchmarks(table, snakemake.output.plot)
    # Written after every heavy job (their benchmark files are this rule's inputs): the run's status as the records
    # give it, as `clipflow status` prints them.
    Path(snakemake.output.status).write_text(status_page(record_status(Path(snakemake.output.table).parents[1])))
