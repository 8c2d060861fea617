rule download_shard:
    input:
        shard=f"{PLAN_DIR}/shards/{{shard}}.parquet",
        demo_images=demo_images,
    output:
        tar=f"{SHARDS_DIR}/{{shard}}.tar",
        parquet=f"{SHARDS_DIR}/{{shard}}.parquet",
        stats=f"{SHARDS_DIR}/{{shard}}_stats.json",
    params:
        options=config["download"],
        kept_columns=config["input"]["keep_cols"],
    log:
        "logs/download/{shard}.log",
    threads: 1
    resources:
        mem_mb=config["download"]["mem_mb"],
        runtime=120,
    conda:
        "../envs/download.yaml"
    script:
        "../scripts/download_shard.py"


rule summarize_downloads:
    input:
        state=f"{PLAN_DIR}/state.json",
        shards=downloaded_shards(),
    output:
        summary="results/summary/download.json",
        table="results/summary/download.txt",
        plot=report(
            "results/summary/download.png",
            caption="../report/download.rst",
            category="Download",
        ),
    params:
        plan_dir=PLAN_DIR,
        shards_dir=SHARDS_DIR,
    log:
        "logs/summary/download.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../envs/clipflow.yaml"
    script:
        "../scripts/summarize_downloads.py"
