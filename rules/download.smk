# Writes NNNNNNNN.{tar,parquet,_stats.json} for each shard of the batch next to the record; the
# record alone is the declared output, so a failed batch keeps its finished shards for the rerun.
# download.threads (connections, not CPUs) is read at run time: it changes no output.
rule download_batch:
    input:
        unpack(download_subset),
        shards=batch_plan_shards,
        demo_images=demo_images,
    output:
        record=f"{SHARDS_DIR}/batches/{{batch}}.json",
    log:
        "logs/download/{batch}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/download/{{batch}}.tsv"
    conda:
        "../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["download"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: max(60, 10 * config["download"]["shards_per_job"])
        * attempt,
    params:
        options=settings("download"),
        kept_columns=config["input"]["keep_cols"],
    script:
        "../scripts/download_batch.py"


rule summarize_downloads:
    input:
        state=f"{PLAN_DIR}/state.json",
        records=all_batch_records(),
    output:
        summary="results/summary/download.json",
        table="results/summary/download.txt",
        plot=report(
            "results/summary/download.png",
            caption="../report/download.rst",
            category="Download",
        ),
    log:
        "logs/summary/download.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/summarize_downloads.py"
