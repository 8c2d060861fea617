# Writes NNNNNNNN.{tar,parquet,_stats.json} for each shard of the batch next to the record; the
# record alone is the declared output, so a failed batch keeps its finished shards for the rerun.
# Plan shards are not inputs: a file per shard would cost the DAG ~0.3 ms each at every call (128k at scale).
# download.threads (connections, not CPUs) is read at run time: it changes no output.
rule download_batch:
    input:
        unpack(download_subset),
        # Plan shards never change once written; the batch's shard list (a param) says when it grew.
        plan=ancient(f"{PLAN_DIR}/state.json"),
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
        shards=lambda wildcards: BATCHES[wildcards.batch],
        options=settings("download"),
        kept_columns=config["input"]["keep_cols"],
        repair=repair(f"{SHARDS_DIR}/batches/{{batch}}.json"),
    script:
        "../scripts/download_batch.py"


localrules:
    list_batches,


rule list_batches:
    input:
        records=all_batch_records(),
    output:
        listing=DOWNLOADED,
    log:
        "logs/download/list_batches.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/list_records.py"


rule summarize_downloads:
    input:
        state=f"{PLAN_DIR}/state.json",
        batches=DOWNLOADED,
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
