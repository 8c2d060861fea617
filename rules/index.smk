rule build_index:
    input:
        chunks=all_chunk_records(),
    output:
        index=f"{INDEX_DIR}/{{modality}}.index",
        infos=f"{INDEX_DIR}/{{modality}}.infos.json",
    log:
        "logs/index/{modality}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/index/{{modality}}.tsv"
    conda:
        "../envs/index.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        options=settings("index"),
        embeddings=lambda wildcards: shard_embeddings(wildcards.modality),
    script:
        "../scripts/build_index.py"


# The stored fp16 embeddings behind each index, in id order: what searches re-rank their candidates with.
rule index_vectors:
    input:
        chunks=all_chunk_records(),
    output:
        manifest=f"{INDEX_DIR}/{{modality}}.vectors.json",
    log:
        "logs/index/vectors_{modality}.log",
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        embeddings=lambda wildcards: shard_embeddings(wildcards.modality),
    script:
        "../scripts/index_vectors.py"


rule index_metadata:
    input:
        chunks=all_chunk_records(),
        manifest=MODEL_MANIFEST,
    output:
        metadata=f"{INDEX_DIR}/metadata.arrow",
        manifest=f"{INDEX_DIR}/model.json",
    log:
        "logs/index/metadata.log",
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
    params:
        metadata=shard_embeddings("metadata"),
    script:
        "../scripts/index_metadata.py"


rule summarize_embeddings:
    input:
        chunks=all_chunk_records(),
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
    params:
        image=shard_embeddings("image"),
        text=shard_embeddings("text"),
    script:
        "../scripts/summarize_embeddings.py"
