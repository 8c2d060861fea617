# Near-duplicate removal (semantic_dedup filters) as jobs, none of which holds the pool; see
# clipflow.curate.near_duplicate_jobs. Their decisions equal near_duplicates()'s in one process.
localrules:
    list_near_duplicate_assignments,


rule near_duplicate_centroids:
    input:
        chunks=EMBEDDED,
    output:
        centroids=f"{NEAR_DUPLICATES_DIR}/{{filter}}/centroids.npy",
        layout=f"{NEAR_DUPLICATES_DIR}/{{filter}}/layout.json",
    log:
        "logs/curate/near_duplicates/{filter}/centroids.log",
    benchmark:
        f"{BENCHMARKS_DIR}/curate/near_duplicates/{{filter}}/centroids.tsv"
    conda:
        "../envs/curate.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["near_duplicates"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        options=near_duplicate_clustering,
    script:
        "../scripts/near_duplicate_centroids.py"


rule near_duplicate_assign:
    input:
        centroids=f"{NEAR_DUPLICATES_DIR}/{{filter}}/centroids.npy",
        layout=f"{NEAR_DUPLICATES_DIR}/{{filter}}/layout.json",
    output:
        vectors=f"{NEAR_DUPLICATES_DIR}/{{filter}}/assign/{{chunk}}/vectors.npy",
        rows=f"{NEAR_DUPLICATES_DIR}/{{filter}}/assign/{{chunk}}/rows.npy",
        bounds=f"{NEAR_DUPLICATES_DIR}/{{filter}}/assign/{{chunk}}/bounds.npy",
    log:
        "logs/curate/near_duplicates/{filter}/assign_{chunk}.log",
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["near_duplicates"]["mem_mb"] * attempt,
    params:
        shards=lambda wildcards: CHUNKS[wildcards.chunk],
        embeddings=EMBEDDINGS_DIR,
        modality=lambda wildcards: near_duplicate_options(wildcards)["modality"],
    script:
        "../scripts/near_duplicate_assign.py"


rule list_near_duplicate_assignments:
    input:
        records=lambda wildcards: expand(
            f"{NEAR_DUPLICATES_DIR}/{wildcards.filter}/assign/{{chunk}}/bounds.npy", chunk=CHUNKS
        ),
    output:
        listing=f"{NEAR_DUPLICATES_DIR}/{{filter}}/assignments.json",
    log:
        "logs/curate/near_duplicates/{filter}/list_assignments.log",
    conda:
        "../envs/clipflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/list_records.py"


rule near_duplicate_pairs:
    input:
        assignments=f"{NEAR_DUPLICATES_DIR}/{{filter}}/assignments.json",
        layout=f"{NEAR_DUPLICATES_DIR}/{{filter}}/layout.json",
    output:
        pairs=f"{NEAR_DUPLICATES_DIR}/{{filter}}/pairs/{{group}}.npy",
        bounds=f"{NEAR_DUPLICATES_DIR}/{{filter}}/pairs/{{group}}.bounds.npy",
    log:
        "logs/curate/near_duplicates/{filter}/pairs_{group}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/curate/near_duplicates/{{filter}}/pairs_{{group}}.tsv"
    conda:
        "../envs/curate.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["near_duplicates"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        groups=config["curate"]["near_duplicates"]["cluster_groups"],
        threshold=lambda wildcards: near_duplicate_options(wildcards)["threshold"],
    script:
        "../scripts/near_duplicate_pairs.py"


rule near_duplicate_decide:
    input:
        unpack(near_duplicate_pairs),
        layout=f"{NEAR_DUPLICATES_DIR}/{{filter}}/layout.json",
    output:
        duplicate_of=f"{NEAR_DUPLICATES_DIR}/{{filter}}/duplicate_of.npy",
    log:
        "logs/curate/near_duplicates/{filter}/decide.log",
    benchmark:
        f"{BENCHMARKS_DIR}/curate/near_duplicates/{{filter}}/decide.tsv"
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["near_duplicates"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    script:
        "../scripts/near_duplicate_decide.py"
