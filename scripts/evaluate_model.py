from pathlib import Path

from clipflow import files
from clipflow.evaluate.benchmark import HOLDOUT_TASK, holdout_task, run_task
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    tasks = {HOLDOUT_TASK: holdout_task(Path(snakemake.input.holdout[0]).parent), **snakemake.params.benchmarks}
    model_config = snakemake.input.get("model_config")
    batch_size = snakemake.config["evaluate"]["batch_size"]  # sizes the work only
    scores = {
        name: run_task(snakemake.params.model, snakemake.input.checkpoint, task, model_config, batch_size)
        for name, task in tasks.items()
    }
    files.write_json(snakemake.output.scores, scores)
