# open_clip's trainer on a subset's shards, with DataComp's hyperparameters for the configured scale. The run
# folder beside the outputs keeps the checkpoints: a killed or timed-out job (SLURM resubmits it) resumes from the
# last one. GPUs, nodes and workers size the job only; the global batch stays the same.
rule train:
    input:
        unpack(model_config_file),
        shards=reshard_record,
        summary=f"{SUBSETS_DIR}/{{subset}}/summary.json",
    output:
        checkpoint=f"{TRAIN_DIR}/{{subset}}/checkpoint.pt",
        provenance=f"{TRAIN_DIR}/{{subset}}/provenance.json",
    log:
        "logs/train/{subset}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/train/{{subset}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["train"]["gpus"] * (config["train"]["workers"] + 1)
    resources:
        **TRAIN_NODES,
        gpu=config["train"]["gpus"] * config["train"]["nodes"],
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
    params:
        hyperparameters=TRAINING,
    script:
        "../scripts/train_model.py"
