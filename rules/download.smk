rule download_shard:
    input:
        shard=f"{PLAN_DIR}/shards/{{shard}}.parquet",
        demo_images=demo_images,
    output:
        tar=f"{SHARDS_DIR}/{{shard}}.tar",
        parquet=f"{SHARDS_DIR}/{{shard}}.parquet",
        stats=f"{SHARDS_DIR}/{{shard}}_stats.json",
    log:
        "logs/download/{shard}.log",
    conda:
        "../envs/download.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["download"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        options=config["download"],
        kept_columns=config["input"]["keep_cols"],
    script:
        "../scripts/download_shard.py"


rule summarize_downloads:
    input:
        state=f"{PLAN_DIR}/state.json",
        tars=downloaded_shards(".tar"),
        parquets=downloaded_shards(".parquet"),
        stats=downloaded_shards("_stats.json"),
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
