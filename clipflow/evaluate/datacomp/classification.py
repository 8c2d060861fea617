"""DataComp's webdataset tasks (wds_<task>_test/): zero-shot classification as DataComp's wds_eval runs it through
clip_benchmark, and the group metrics its WILDS and fairness evaluations add from each sample's npy metadata.

What makes the numbers DataComp's:
- class names and templates are the files' non-blank lines (clip_benchmark 1.4.0, DataComp's pin, drops blank
  lines; 1.6 keeps them as classes);
- the classifier's text embeddings under CUDA autocast on a GPU and in float32 on a CPU (clip_benchmark 1.4.0's
  default amp, which was CUDA's autocast only), the images without amp (DataComp passes amp=False);
- DataComp's loader: batches of its batch size, shards split over 4 workers, each worker batching its own shards;
- the group metrics as WILDS computes them (float32 group means; worst group over the groups that have samples;
  groups numbered 0..max of the metadata column). FMoW's worst region includes region "Other": DataComp skips
  groups whose name holds "Other", but its groups are named by number ("region:5"), so none is skipped.
"""

from pathlib import Path

import numpy as np
import torch

WORKERS = 4  # DataComp's loaders': part of the result, since each worker batches its own shards
IMAGE_KEYS = ["webp", "png", "jpg", "jpeg"]  # the first of these a sample has is its image


def lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def loader(folder: Path, transform, batch_size: int, with_metadata: bool):
    """Batches of (images, classes[, metadata]) from the set's test shards, in DataComp's batching."""
    import webdataset as wds

    shards = int((folder / "test" / "nshards.txt").read_text())
    urls = [str(folder / "test" / f"{number}.tar") for number in range(shards)]
    labels = ("cls", "npy") if with_metadata else ("cls",)
    dataset = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False)
        .decode(wds.autodecode.ImageHandler("pil", extensions=IMAGE_KEYS))
        .to_tuple(IMAGE_KEYS, *labels)
        .map_tuple(transform, *[None] * len(labels))
    )
    return torch.utils.data.DataLoader(
        dataset.batched(batch_size), batch_size=None, shuffle=False, num_workers=WORKERS
    )


def evaluate(task, folder: Path, model, tokenizer, transform, device: str, batch_size: int) -> dict:
    """The task's metrics: acc1, acc5 (None under five classes), mean_per_class_recall, and its group metrics."""
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from sklearn.metrics import balanced_accuracy_score

    classes, templates = lines(folder / "classnames.txt"), lines(folder / "zeroshot_classification_templates.txt")
    classifier = zsc.zero_shot_classifier(model, tokenizer, classes, templates, device, amp=device == "cuda")
    group_metrics = GROUP_METRICS.get(task.key)
    metadata, batches = [], 0

    def images_and_classes():
        nonlocal batches
        for images, targets, *rest in loader(folder, transform, batch_size, group_metrics is not None):
            metadata.extend(rest)
            batches += 1
            yield images, targets

    try:
        logits, target = zsc.run_classification(model, classifier, images_and_classes(), device, amp=False)
    except RuntimeError:
        if batches:
            raise
        raise ValueError(f"{folder}: no samples in its test shards") from None  # torch.cat of no batches
    pred = logits.argmax(axis=1).cpu()
    target = target.cpu()
    if len(classes) >= 5:
        acc1, acc5 = zsc.accuracy(logits, target, topk=(1, 5))
    else:
        acc1, acc5 = zsc.accuracy(logits, target, topk=(1,))[0], None
    metrics = {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(balanced_accuracy_score(target, pred))}
    if group_metrics is not None:
        metrics.update(group_metrics(logits, target, torch.cat(metadata)))
    return metrics


def group_means(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each present group's float32 mean of `values`, groups numbered 0..max (WILDS' CombinatorialGrouper)."""
    groups = groups.long()
    count = int(groups.max()) + 1
    sums = torch.zeros(count, dtype=torch.float32).index_add_(0, groups, values.float())
    counts = torch.bincount(groups, minlength=count).float()
    return (sums / counts)[counts > 0]


def _iwildcam(logits, target, metadata) -> dict:
    from sklearn.metrics import f1_score, recall_score

    pred, labels = logits.argmax(axis=1).numpy(), np.unique(target.numpy())
    correct = (logits.argmax(axis=1) == target).float()
    recall = recall_score(target.numpy(), pred, average="macro", labels=labels)
    f1 = f1_score(target.numpy(), pred, average="macro", labels=labels)
    # WILDS returns sklearn's scores as torch.tensor(score): float32
    return {
        "acc_avg": correct.mean().item(),
        "recall-macro_all": float(np.float32(recall)),
        "F1-macro_all": float(np.float32(f1)),
    }


def _worst_group(name: str, column: int, top: int = 1):
    """Accuracy (within the top `top` classes) on average and in the worst group of a metadata column."""

    def metrics(logits, target, metadata) -> dict:
        # DataComp's predictions: the argmax (which breaks ties as topk may not), or topk's indices
        predicted = logits.argmax(axis=1, keepdim=True) if top == 1 else torch.topk(logits, top, dim=1).indices
        correct = (predicted == target.unsqueeze(-1)).any(-1).float()
        worst = group_means(correct, metadata[:, column]).min()
        return {f"{name}_avg": correct.mean().item(), f"{name}_wg": worst.item()}

    return metrics


def _fmow(logits, target, metadata) -> dict:
    scores = _worst_group("acc", column=0)(logits, target, metadata)  # metadata: region, year, y
    return {"acc_avg": scores["acc_avg"], "acc_worst_region": scores["acc_wg"]}


# Tasks with group metrics, and the metadata column that groups them (DataComp's evaluators)
GROUP_METRICS = {
    "wilds/iwildcam": _iwildcam,
    "wilds/camelyon17": _worst_group("acc", column=1),  # hospital, slide, y: by slide
    "wilds/fmow": _fmow,
    "fairness/dollar_street": _worst_group("acc_top5", column=0, top=5),  # income_ds, income_meta, region
    "fairness/geode": _worst_group("acc", column=0),  # region, country
}
