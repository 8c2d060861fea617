from pathlib import Path

from clipflow import files
from clipflow.evaluate import datacomp
from clipflow.evaluate.benchmark import HOLDOUT_TASK, holdout_task, run_task
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    params, model_config = snakemake.params, snakemake.input.get("model_config")
    if params.suite == "datacomp":
        datacomp.check_sets(params.data_dir)  # before any model is loaded
    tasks = {HOLDOUT_TASK: holdout_task(Path(snakemake.input.holdout[0]).parent), **params.benchmarks}
    batch_size = snakemake.config["evaluate"]["batch_size"]  # sizes the work only
    scores = {
        name: run_task(params.model, snakemake.input.checkpoint, task, model_config, batch_size)
        for name, task in tasks.items()
    }
    if params.suite == "datacomp":
        scores.update(datacomp.evaluate(params.model, snakemake.input.checkpoint, params.data_dir, model_config))
    files.write_json(snakemake.output.scores, scores)
