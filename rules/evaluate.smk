# The held-out slice, as a filter's table: while any subset trains, every subset leaves these rows out.
rule held_out_rows:
    input:
        pool=f"{CURATE_DIR}/pool.parquet",
    output:
        table=f"{EVALUATE_DIR}/held_out.parquet",
    log:
        "logs/evaluate/held_out_rows.log",
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["mem_mb"] * attempt,
    params:
        fraction=config["evaluate"]["holdout_fraction"],
    script:
        "../scripts/held_out_rows.py"


# Up to evaluate.max_samples held-out rows with their images, as a clip_benchmark retrieval data set.
rule holdout_dataset:
    input:
        pool=f"{CURATE_DIR}/pool.parquet",
        held_out=f"{EVALUATE_DIR}/held_out.parquet",
        batches=DOWNLOADED,
    output:
        dataset=expand(f"{HOLDOUT_DIR}/{{name}}", name=HOLDOUT_FILES),
    log:
        "logs/evaluate/holdout_dataset.log",
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: config["curate"]["mem_mb"] * attempt,
    params:
        max_samples=config["evaluate"]["max_samples"],
    script:
        "../scripts/holdout_dataset.py"


# clip_benchmark's zero-shot retrieval on the held-out slice, its tasks on the configured local data sets, and
# the configured suite (DataComp's evaluate.py).
rule evaluate:
    input:
        unpack(model_config_file),
        checkpoint=f"{TRAIN_DIR}/{{subset}}/checkpoint.pt",
        holdout=expand(f"{HOLDOUT_DIR}/{{name}}", name=HOLDOUT_FILES),
    output:
        scores=f"{EVALUATE_DIR}/{{subset}}.json",
    log:
        "logs/evaluate/{subset}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/evaluate/{{subset}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=config["evaluate"]["mem_mb"],
    params:
        model=TRAINING["model"],
        benchmarks=config["evaluate"]["benchmarks"],
        suite=config["evaluate"]["suite"],
        data_dir=config["evaluate"]["data_dir"],
    script:
        "../scripts/evaluate_model.py"


# The subsets side by side: size, filters, training and scores. A small table, made where Snakemake runs.
localrules:
    compare_subsets,


rule compare_subsets:
    input:
        scores=expand(f"{EVALUATE_DIR}/{{subset}}.json", subset=config["train"]["subsets"]),
        provenance=expand(
            f"{TRAIN_DIR}/{{subset}}/provenance.json", subset=config["train"]["subsets"]
        ),
    output:
        table=report(
            f"{EVALUATE_DIR}/compare.tsv", caption="../report/compare.rst", category="Evaluation"
        ),
        plot=report(
            f"{EVALUATE_DIR}/compare.png", caption="../report/compare.rst", category="Evaluation"
        ),
    log:
        "logs/evaluate/compare.log",
    conda:
        "../envs/curate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/compare_subsets.py"
