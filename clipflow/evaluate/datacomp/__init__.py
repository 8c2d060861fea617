"""DataComp's evaluation (its evaluate.py) of a trained checkpoint on local copies of DataComp's evaluation sets, in
the layout its download_evalsets.py writes: every task's metrics and main metric, and the summary scores."""

from pathlib import Path

from clipflow.errors import ClipflowError
from clipflow.evaluate.datacomp import classification, retrieval
from clipflow.evaluate.datacomp.tasks import CLASSIFICATION, RETRIEVAL, SUMMARY, TASKS, WINOGAVIL, missing, summary

BATCH_SIZE = 64  # evaluate.py's default: DataComp's numbers depend on it in their last bits
FETCH = "python download_evalsets.py {data_dir}  # in a checkout of github.com/mlfoundations/datacomp"
EVALUATORS = {CLASSIFICATION: classification.evaluate, RETRIEVAL: retrieval.retrieval, WINOGAVIL: retrieval.winogavil}


def check_sets(data_dir: Path | str) -> None:
    """Refuse a data folder that lacks any of the evaluation sets, naming them and how to fetch them."""
    absent = missing(data_dir)
    if absent:
        names = ", ".join(f"{task.name} ({where(task, data_dir)})" for task in absent)
        raise ClipflowError(
            f"evaluate.data_dir {data_dir} lacks {len(absent)} of DataComp's {len(TASKS)} evaluation sets: {names}. "
            f"Fetch them with: {FETCH.format(data_dir=data_dir)}"
        )


def where(task, data_dir) -> str:
    location = task.location(data_dir)
    return str(location) if task.kind == CLASSIFICATION else f"{task.hub_name} in {location}"


def evaluate(model_name: str, checkpoint, data_dir: Path | str, model_config=None, device=None) -> dict[str, dict]:
    """{task name: its metrics, main_metric among them} for every task, then the summary scores under SUMMARY. On
    a GPU where there is one, as DataComp runs; `model_config` registers an architecture open_clip lacks."""
    import open_clip
    import torch

    check_sets(data_dir)
    if model_config:
        open_clip.add_model_config(str(model_config))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint))
    model = model.eval().to(device)
    tokenizer = open_clip.get_tokenizer(model_name)
    results = {}
    for task in TASKS:
        print(f"Evaluating on {task.name}", flush=True)
        evaluator = EVALUATORS[task.kind]
        metrics = evaluator(task, task.location(data_dir), model, tokenizer, transform, device, BATCH_SIZE)
        metrics["main_metric"] = metrics[task.main_metric]
        print(f"Score: {metrics['main_metric']:.4f}", flush=True)
        results[task.name] = metrics
    results[SUMMARY] = summary({name: metrics["main_metric"] for name, metrics in results.items()})
    return results
