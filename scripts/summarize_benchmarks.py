from clipflow.logs import redirect_to_log
from clipflow.benchmarks import plot_benchmarks, read_benchmarks

with redirect_to_log(snakemake.log[0]):
    table = read_benchmarks(snakemake.input.benchmarks)
    table.to_csv(snakemake.output.table, sep="\t", index=False)
    plot_benchmarks(table, snakemake.output.plot)
