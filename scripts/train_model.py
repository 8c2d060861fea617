import json
from pathlib import Path

from clipflow import files
from clipflow.logs import redirect_to_log
from clipflow.train.run import latest_checkpoint, train

with redirect_to_log(snakemake.log[0]):
    record = json.loads(Path(snakemake.input.shards).read_text())
    shards = [Path(snakemake.input.shards).parent / f"{name}.tar" for name in record["shards"]]
    summary = json.loads(Path(snakemake.input.summary).read_text())
    run_folder = Path(snakemake.output.checkpoint).parent / "run"
    nodes = snakemake.resources.get("nodes", 1)
    gpus = snakemake.resources.gpu // nodes  # of each node
    # a loading process per GPU besides the trainer; locally the threads may be capped below the GPUs
    workers = max(0, snakemake.threads // gpus - 1)
    provenance = train(snakemake.params.hyperparameters, shards, run_folder, gpus, workers, nodes)
    provenance["subset"] = {
        "name": snakemake.wildcards.subset,
        "samples": record["samples"],
        "shards": len(shards),
        "pool": summary["pool"],
        "filters": summary["filter_options"],
    }
    with files.replacing(snakemake.output.checkpoint) as tmp:
        tmp.hardlink_to(latest_checkpoint(run_folder))
    files.write_json(snakemake.output.provenance, provenance)
