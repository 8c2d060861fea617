rule curate_pool:
    input:
        unpack(score_models),
        unpack(pool_downloads),
        chunks=EMBEDDED,
        plan=ancient(f"{PLAN_DIR}/state.json"),
    output:
        pool=f"{CURATE_DIR}/pool.parquet",
    log:
        "logs/curate/pool.log",
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["mem_mb"] * attempt,
    params:
        metadata_cols=config["input"]["metadata_cols"],
    script:
        "../scripts/curate_pool.py"


# clip-retrieval's aesthetic embeddings (rating0..9.npy) from this pool, for the service's aesthetic_score.
rule aesthetic_embeddings:
    input:
        pool=f"{CURATE_DIR}/pool.parquet",
        chunks=EMBEDDED,
    output:
        ratings=expand(f"{AESTHETIC_DIR}/rating{{rating}}.npy", rating=RATINGS),
    log:
        "logs/curate/aesthetic_embeddings.log",
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["mem_mb"] * attempt,
    script:
        "../scripts/aesthetic_embeddings.py"


rule curate_filter:
    input:
        unpack(filter_embeddings),
        pool=f"{CURATE_DIR}/pool.parquet",
        assets=filter_assets,
    output:
        table=f"{CURATE_DIR}/filters/{{filter}}.parquet",
        info=f"{CURATE_DIR}/filters/{{filter}}.json",
    log:
        "logs/curate/filter_{filter}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/curate/filter_{{filter}}.tsv"
    conda:
        "../envs/curate.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        options=lambda wildcards: config["curate"]["filters"][wildcards.filter],
        modality=filter_modality,
    script:
        "../scripts/curate_filter.py"


rule pool_takedowns:
    input:
        pool=f"{CURATE_DIR}/pool.parquet",
        rows=f"{TAKEDOWNS_DIR}/rows.parquet",
    output:
        table=f"{TAKEDOWNS_DIR}/pool.parquet",
    log:
        "logs/curate/takedowns.log",
    conda:
        "../envs/index.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["mem_mb"] * attempt,
    script:
        "../scripts/pool_takedowns.py"


rule curate_subset:
    input:
        unpack(pool_takedowns),
        unpack(held_out_rows),
        unpack(pool_downloads),
        pool=f"{CURATE_DIR}/pool.parquet",
        tables=lambda wildcards: subset_filter_outputs(wildcards, "parquet"),
        infos=lambda wildcards: subset_filter_outputs(wildcards, "json"),
    output:
        uids=f"{SUBSETS_DIR}/{{subset}}/uids.npy",
        kept=f"{SUBSETS_DIR}/{{subset}}/kept.parquet",
        removed=f"{SUBSETS_DIR}/{{subset}}/removed.parquet",
        summary=f"{SUBSETS_DIR}/{{subset}}/summary.json",
        effects=report(
            f"{SUBSETS_DIR}/{{subset}}/filter_effects.png",
            caption="../report/filter_effects.rst",
            category="Curation",
            subcategory="{subset}",
        ),
        score_cut=report(
            f"{SUBSETS_DIR}/{{subset}}/clip_score_cut.png",
            caption="../report/clip_score_cut.rst",
            category="Curation",
            subcategory="{subset}",
        ),
        examples=report(
            f"{SUBSETS_DIR}/{{subset}}/examples.png",
            caption="../report/curation_examples.rst",
            category="Curation",
            subcategory="{subset}",
        ),
    log:
        "logs/curate/subset_{subset}.log",
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["mem_mb"] * attempt,
    params:
        filters=lambda wildcards: config["curate"]["subsets"][wildcards.subset]["filters"],
    script:
        "../scripts/curate_subset.py"


# Writes NNNNNNNN.{tar,parquet,_stats.json} next to the record, which alone is the declared output:
# an interrupted reshard keeps its finished shards for the rerun.
rule reshard:
    input:
        kept=f"{SUBSETS_DIR}/{{subset}}/kept.parquet",
        batches=DOWNLOADED,
    output:
        record=f"{SUBSETS_DIR}/{{subset}}/shards/reshard.json",
    log:
        "logs/curate/reshard_{subset}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/curate/reshard_{{subset}}.tsv"
    conda:
        "../envs/curate.yaml"
    threads: config["curate"]["reshard"]["processes"]
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["reshard"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        samples_per_shard=config["curate"]["reshard"]["samples_per_shard"],
    script:
        "../scripts/reshard.py"
