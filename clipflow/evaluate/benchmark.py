"""clip_benchmark's tasks on a trained checkpoint, each through clip_benchmark's own command line in a process of its
own (clipflow.launch registers a custom model config first), and the subsets' comparison table."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from clipflow.errors import ClipflowError
from clipflow.train.run import launcher

RECALL_K = (1, 5, 10)
HOLDOUT_TASK = "holdout_retrieval"
MAIN_METRIC = "main_metric"


def holdout_task(folder: Path | str) -> dict:
    """The held-out slice as a retrieval task: recall@k for each k below its size (torch.topk needs k <= size)."""
    samples = len(pd.read_parquet(Path(folder) / "samples.parquet", columns=["key"]))
    recall_k = [k for k in RECALL_K if k <= samples]
    return {"dataset": "wds/holdout", "root": str(folder), "task": "zeroshot_retrieval", "recall_k": recall_k}


def run_task(model: str, checkpoint, task: dict, model_config: str | None, batch_size: int) -> dict:
    """One clip_benchmark evaluation of `checkpoint`; its metrics (image_retrieval_recall@k, text_retrieval_recall@k
    or acc1, acc5, mean_per_class_recall)."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "metrics.json"
        command = [sys.executable, *launcher("benchmark", model_config), "eval", "--model", model]
        command += ["--pretrained", str(checkpoint), "--dataset", task["dataset"], "--dataset_root", task["root"]]
        command += ["--task", task["task"], "--output", str(output), "--batch_size", str(batch_size)]
        command += ["--num_workers", "0", "--recall_k", *map(str, task.get("recall_k", RECALL_K))]
        print(" ".join(command), flush=True)
        result = subprocess.run(command, stdout=sys.stdout, stderr=subprocess.STDOUT)
        if result.returncode != 0 or not output.exists():
            raise ClipflowError(f"clip_benchmark failed on {task['dataset']} ({task['root']}): see its output above")
        return json.loads(output.read_text())["metrics"]


def comparison(provenances: dict[str, dict], scores: dict[str, dict]) -> pd.DataFrame:
    """One row per trained subset: its size, the filters that made it, how it was trained and its scores (of a
    suite's tasks, the main metric; its summary scores, such as DataComp's average, as they are)."""
    rows = []
    for subset, provenance in provenances.items():
        hyper = provenance["hyperparameters"]
        row = {
            "subset": subset,
            "samples": provenance["subset"]["samples"],
            "pool": provenance["subset"]["pool"],
            "filters": ", ".join(provenance["subset"]["filters"]) or "none",
            "model": hyper["model"],
            "samples_seen": hyper["samples_seen"],
        }
        for task, metrics in scores[subset].items():
            if MAIN_METRIC in metrics:  # a suite's task: its main metric alone (the rest are in the scores file)
                metrics = {MAIN_METRIC: metrics[MAIN_METRIC]}
            row.update({f"{task}/{name}": value for name, value in metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows)
