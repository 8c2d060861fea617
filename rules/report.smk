# Measured time and peak memory of the heavy jobs (their benchmark: files), for the report: a small table,
# made where Snakemake runs; and, as it runs after every heavy job, the run's status page (clipflow status).
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
        status=report(
            "results/summary/status.html",
            caption="../report/status.rst",
            category="Status",
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
