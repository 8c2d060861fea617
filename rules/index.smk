rule build_index:
    input:
        chunks=EMBEDDED,
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
    script:
        "../scripts/build_index.py"


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
    log:
        "logs/index/metadata.log",
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
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
