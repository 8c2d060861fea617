# The index as jobs (see clipflow.index.builder): train on a sample, add each embedding chunk to a copy of the
# trained index, merge the parts into on-disk lists. New input files add parts; the training stays until the
# pool outgrows it by index.retrain_growth.
localrules:
    list_training_chunks,
    list_index_parts,


# One file standing for the chunks the index trains on: index_train's lone input (listed, as in
# write_listing, since every part's job checks its trained index's inputs: thousands x thousands of files).
rule list_training_chunks:
    input:
        records=index_training_records,
    output:
        listing=INDEX_TRAINING,
    log:
        "logs/index/list_training_chunks.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/list_records.py"


rule index_train:
    input:
        chunks=INDEX_TRAINING,
    output:
        index=f"{INDEX_DIR}/{{modality}}/trained.index",
        infos=f"{INDEX_DIR}/{{modality}}/trained.json",
    log:
        "logs/index/{modality}/train.log",
    benchmark:
        f"{BENCHMARKS_DIR}/index_train/{{modality}}.tsv"
    conda:
        "../envs/index.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        rows=TRAINED_ROWS,
        options=index_training_options(),
        repair=repair(f"{INDEX_DIR}/{{modality}}/trained.json"),
    script:
        "../scripts/index_train.py"


rule index_add:
    input:
        trained=f"{INDEX_DIR}/{{modality}}/trained.index",
        chunk=lambda wildcards: chunk_record(wildcards.chunk),
    output:
        part=f"{INDEX_DIR}/{{modality}}/parts/{{chunk}}.index",
        record=f"{INDEX_DIR}/{{modality}}/parts/{{chunk}}.json",
    log:
        "logs/index/{modality}/add_{chunk}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/index_add/{{modality}}_{{chunk}}.tsv"
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["part_mem_mb"] * attempt,
    params:
        repair=repair(f"{INDEX_DIR}/{{modality}}/parts/{{chunk}}.json"),
    script:
        "../scripts/index_add.py"


rule list_index_parts:
    input:
        records=lambda wildcards: expand(
            f"{INDEX_DIR}/{wildcards.modality}/parts/{{chunk}}.index", chunk=CHUNKS
        ),
    output:
        listing=f"{INDEX_DIR}/{{modality}}/parts.json",
    log:
        "logs/index/{modality}/list_parts.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/list_records.py"


rule index_merge:
    input:
        trained=f"{INDEX_DIR}/{{modality}}/trained.index",
        trained_infos=f"{INDEX_DIR}/{{modality}}/trained.json",
        parts=f"{INDEX_DIR}/{{modality}}/parts.json",
    output:
        index=f"{INDEX_DIR}/{{modality}}.index",
        lists=f"{INDEX_DIR}/{{modality}}.ivfdata",
        infos=f"{INDEX_DIR}/{{modality}}.infos.json",
    log:
        "logs/index/{modality}/merge.log",
    benchmark:
        f"{BENCHMARKS_DIR}/index_merge/{{modality}}.tsv"
    conda:
        "../envs/index.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        max_index_query_time_ms=config["index"]["max_index_query_time_ms"],
        repair=repair(f"{INDEX_DIR}/{{modality}}.infos.json"),
    script:
        "../scripts/index_merge.py"


# The stored fp16 embeddings behind each index, in id order: what searches re-rank their candidates with.
rule index_vectors:
    input:
        chunks=EMBEDDED,
    output:
        manifest=f"{INDEX_DIR}/{{modality}}.vectors.json",
    log:
        "logs/index/vectors_{modality}.log",
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/index_vectors.py"


rule index_metadata:
    input:
        chunks=EMBEDDED,
        manifest=MODEL_MANIFEST,
    output:
        metadata=f"{INDEX_DIR}/metadata.arrow",
        manifest=f"{INDEX_DIR}/model.json",
        record=f"{INDEX_DIR}/metadata.infos.json",
    log:
        "logs/index/metadata.log",
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
    params:
        repair=repair(f"{INDEX_DIR}/metadata.infos.json"),
    script:
        "../scripts/index_metadata.py"


rule summarize_embeddings:
    input:
        chunks=EMBEDDED,
    output:
        summary="results/summary/embeddings.json",
        throughput=report(
            "results/summary/embedding_throughput.png",
            caption="../report/embedding_throughput.rst",
            category="Embeddings",
        ),
        similarity=report(
            "results/summary/image_text_similarity.png",
            caption="../report/image_text_similarity.rst",
            category="Embeddings",
        ),
    log:
        "logs/summary/embeddings.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/summarize_embeddings.py"


# The blocklist's rows, left out of every search of the index; nothing is rebuilt (clipflow.index.takedowns).
rule index_takedowns:
    input:
        unpack(pool_downloads),
        blocklist=blocklist_files(),
        metadata=f"{INDEX_DIR}/metadata.arrow",
    output:
        ids=f"{INDEX_DIR}/takedowns.npy",
        record=f"{INDEX_DIR}/takedowns.infos.json",
        rows=f"{TAKEDOWNS_DIR}/rows.parquet",
        audit=f"{TAKEDOWNS_DIR}/audit.json",
    log:
        "logs/index/takedowns.log",
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
    params:
        entries=config["blocklist"],
    script:
        "../scripts/index_takedowns.py"
