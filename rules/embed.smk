localrules:
    fetch_model,


# Runs where the network is (the submit host on a cluster); embedding jobs then load offline.
rule fetch_model:
    output:
        manifest=MODEL_MANIFEST,
    log:
        "logs/embed/fetch_model.log",
    conda:
        "../envs/embed.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        embed=config["embed"],
    script:
        "../scripts/fetch_model.py"


rule embed_chunk:
    input:
        batches=chunk_batch_records,
        manifest=MODEL_MANIFEST,
    output:
        image=f"{EMBEDDINGS_DIR}/image/{{chunk}}.npy",
        text=f"{EMBEDDINGS_DIR}/text/{{chunk}}.npy",
        metadata=f"{EMBEDDINGS_DIR}/metadata/{{chunk}}.parquet",
        info=f"{EMBEDDINGS_DIR}/info/{{chunk}}.json",
    log:
        "logs/embed/{chunk}.log",
    conda:
        "../envs/embed.yaml"
    threads: max(1, config["embed"]["workers"])
    resources:
        mem_mb=lambda wildcards, attempt: config["embed"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        tars=chunk_tars,
        options=config["embed"],
        kept_columns=config["input"]["keep_cols"],
    script:
        "../scripts/embed_chunk.py"
