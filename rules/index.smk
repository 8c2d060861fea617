rule build_index:
    input:
        embeddings=lambda wildcards: chunk_outputs(wildcards.modality),
    output:
        index=f"{INDEX_DIR}/{{modality}}.index",
        infos=f"{INDEX_DIR}/{{modality}}.infos.json",
    log:
        "logs/index/{modality}.log",
    conda:
        "../envs/index.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: config["index"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        options=config["index"],
    script:
        "../scripts/build_index.py"


rule index_metadata:
    input:
        metadata=chunk_outputs("metadata"),
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
        mem_mb=config["index"]["mem_mb"],
    script:
        "../scripts/index_metadata.py"


rule summarize_embeddings:
    input:
        infos=chunk_outputs("info"),
        image=chunk_outputs("image"),
        text=chunk_outputs("text"),
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
