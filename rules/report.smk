# Measured time and peak memory of the heavy jobs (their benchmark: files), for the report: a small table,
# made where Snakemake runs.
localrules:
    summarize_benchmarks,


rule summarize_benchmarks:
    input:
        benchmarks=benchmarks(),
    output:
        table="results/summary/benchmarks.tsv",
        plot=report(
            "results/summary/benchmarks.png",
            caption="../report/benchmarks.rst",
            category="Resources",
        ),
    log:
        "logs/summary/benchmarks.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/summarize_benchmarks.py"
