localrules:
    fetch_model,
    list_chunks,


rule list_chunks:
    input:
        records=all_chunk_records(),
    output:
        listing=EMBEDDED,
    log:
        "logs/embed/list_chunks.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/list_records.py"


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
        model=config["embed"]["model"],
        pretrained=config["embed"]["pretrained"],
        checkpoint=config["embed"]["checkpoint"],
    script:
        "../scripts/fetch_model.py"


# Writes image/, text/ and metadata/ files per shard of the chunk, then the chunk's record (the declared
# output). Device and batch size are read at run time and workers come from threads: they change no output.
# With embed.precomputed the chunk's files come from the .npz beside the metadata instead, for every planned
# row: nothing waits for a download.
if config["embed"]["precomputed"]:

    rule precomputed_chunk:
        input:
            plan=ancient(f"{PLAN_DIR}/state.json"),
        output:
            record=f"{EMBEDDINGS_DIR}/info/{{chunk}}.json",
        log:
            "logs/embed/{chunk}.log",
        benchmark:
            f"{BENCHMARKS_DIR}/embed/{{chunk}}.tsv"
        conda:
            "../envs/embed.yaml"
        threads: 1
        resources:
            mem_mb=lambda wildcards, attempt: config["embed"]["mem_mb"] * attempt,
        params:
            shards=lambda wildcards: CHUNKS[wildcards.chunk],
            arrays=config["embed"]["precomputed"],
            columns=config["input"]["keep_cols"] + config["input"]["metadata_cols"],
            model={key: config["embed"][key] for key in ("model", "pretrained", "checkpoint")},
            repair=repair(f"{EMBEDDINGS_DIR}/info/{{chunk}}.json"),
        script:
            "../scripts/precomputed_chunk.py"

else:

    rule embed_chunk:
        input:
            batches=chunk_batch_records,
            manifest=MODEL_MANIFEST,
        output:
            record=f"{EMBEDDINGS_DIR}/info/{{chunk}}.json",
        log:
            "logs/embed/{chunk}.log",
        benchmark:
            f"{BENCHMARKS_DIR}/embed/{{chunk}}.tsv"
        conda:
            "../envs/embed.yaml"
        threads: max(1, config["embed"]["workers"])
        resources:
            mem_mb=lambda wildcards, attempt: config["embed"]["mem_mb"] * attempt,
            runtime=lambda wildcards, attempt: 240 * attempt,
        params:
            tars=chunk_tars,
            precision=config["embed"]["precision"],
            kept_columns=config["input"]["keep_cols"],
            repair=repair(f"{EMBEDDINGS_DIR}/info/{{chunk}}.json"),
        script:
            "../scripts/embed_chunk.py"
