"""DataComp's evaluation tasks: each one's key, name, kind and main metric (DataComp's tasklist.yml), where
download_evalsets.py puts its data, and DataComp's summary scores (aggregate_scores.py).

FairFace and UTKFace, which DataComp also evaluates, have no main metric and are in neither the average nor a
group; they are left out here."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSIFICATION, RETRIEVAL, WINOGAVIL = "classification", "retrieval", "winogavil"


@dataclass(frozen=True)
class Task:
    key: str  # DataComp's task key, as in its eval_results.jsonl
    name: str  # DataComp's name for it (the leaderboard's column)
    main_metric: str = "acc1"
    kind: str = CLASSIFICATION

    def location(self, data_dir: Path | str) -> Path:
        """Where download_evalsets.py writes the task's data: a webdataset folder, or Hugging Face's cache."""
        if self.kind == CLASSIFICATION:
            return Path(data_dir) / f"wds_{self.key.removeprefix('fairness/').replace('/', '-')}_test"
        return Path(data_dir) / "hf_cache"

    @property
    def hub_name(self) -> str:
        """The Hugging Face data set a retrieval task reads (nlphuji's)."""
        return f"nlphuji/{self.key.split('/', 1)[1]}"


RECALL = "mean_per_class_recall"
TASKS = (
    Task("vtab/caltech101", "Caltech-101", RECALL),
    Task("cifar10", "CIFAR-10"),
    Task("vtab/cifar100", "CIFAR-100"),
    Task("vtab/clevr_count_all", "CLEVR Counts"),
    Task("vtab/clevr_closest_object_distance", "CLEVR Distance"),
    Task("country211", "Country211"),
    Task("vtab/dtd", "Describable Textures"),
    Task("vtab/eurosat", "EuroSAT"),
    Task("fgvc_aircraft", "FGVC Aircraft", RECALL),
    Task("food101", "Food-101"),
    Task("gtsrb", "GTSRB"),
    Task("imagenet1k", "ImageNet 1k"),
    Task("imagenet_sketch", "ImageNet Sketch"),
    Task("imagenetv2", "ImageNet v2"),
    Task("imagenet-a", "ImageNet-A"),
    Task("imagenet-o", "ImageNet-O"),
    Task("imagenet-r", "ImageNet-R"),
    Task("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance"),
    Task("mnist", "MNIST"),
    Task("objectnet", "ObjectNet"),
    Task("vtab/flowers", "Oxford Flowers-102", RECALL),
    Task("vtab/pets", "Oxford-IIIT Pet", RECALL),
    Task("voc2007", "Pascal VOC 2007"),
    Task("vtab/pcam", "PatchCamelyon"),
    Task("renderedsst2", "Rendered SST2"),
    Task("vtab/resisc45", "RESISC45"),
    Task("cars", "Stanford Cars"),
    Task("stl10", "STL-10"),
    Task("sun397", "SUN397"),
    Task("vtab/svhn", "SVHN"),
    Task("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", "mean_recall@1", RETRIEVAL),
    Task("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", "mean_recall@1", RETRIEVAL),
    Task("misc/winogavil", "WinoGAViL", "jaccard_score_10-12", WINOGAVIL),
    Task("wilds/iwildcam", "iWildCam", "F1-macro_all"),
    Task("wilds/camelyon17", "Camelyon17"),
    Task("wilds/fmow", "FMoW", "acc_worst_region"),
    Task("fairness/dollar_street", "Dollar Street", "acc_top5_wg"),
    Task("fairness/geode", "GeoDE", "acc_wg"),
)

# aggregate_scores.py's groups: each the mean of its tasks' main metrics
GROUPS = {
    "ImageNet dist. shifts": ("ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet"),
    "VTAB": (
        "Caltech-101",
        "CIFAR-100",
        "CLEVR Counts",
        "CLEVR Distance",
        "Describable Textures",
        "EuroSAT",
        "KITTI Vehicle Distance",
        "Oxford Flowers-102",
        "Oxford-IIIT Pet",
        "PatchCamelyon",
        "RESISC45",
        "SVHN",
        "SUN397",
    ),
    "Retrieval": ("Flickr", "MSCOCO", "WinoGAViL"),
}
SUMMARY = "DataComp"  # the summary scores' name among a model's tasks


def missing(data_dir: Path | str) -> list[Task]:
    """The tasks whose data is not where download_evalsets.py would have put it under `data_dir`."""
    from clipflow.evaluate.datacomp.hf_cache import arrow_files

    absent = []
    for task in TASKS:
        location = task.location(data_dir)
        if task.kind == CLASSIFICATION:
            found = all(path.is_file() and path.stat().st_size > 0 for path in webdataset_files(location))
        else:
            found = bool(arrow_files(location, task.hub_name))
        if not found:
            absent.append(task)
    return absent


def webdataset_files(folder: Path) -> list[Path]:
    """A webdataset set's files, as download_evalsets.py fetches them: its texts, and the tars nshards.txt counts."""
    files = [folder / "classnames.txt", folder / "zeroshot_classification_templates.txt", folder / "test/nshards.txt"]
    try:
        shards = int(files[-1].read_text())
    except (OSError, ValueError):
        return files
    return files + [folder / "test" / f"{number}.tar" for number in range(shards)]


def summary(main_metrics: dict[str, float]) -> dict[str, float]:
    """aggregate_scores.py's scores from each task's main metric: ImageNet, the groups, and the average of all."""
    scores = {"ImageNet": main_metrics["ImageNet 1k"]}
    scores.update({group: float(np.mean([main_metrics[name] for name in names])) for group, names in GROUPS.items()})
    scores["Average"] = float(np.mean(list(main_metrics.values())))
    return scores
