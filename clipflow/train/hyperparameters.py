"""DataComp's training hyperparameters per scale (mlfoundations/datacomp scale_configs.py and slurm_train.sh), and
the config's overrides of them."""

from clipflow.errors import ClipflowError

SCALES = {
    "small": {"model": "ViT-B-32", "batch_size": 4096, "lr": 5e-4, "warmup": 500, "samples_seen": 12_800_000},
    "medium": {"model": "ViT-B-32", "batch_size": 4096, "lr": 5e-4, "warmup": 500, "samples_seen": 128_000_000},
    "large": {"model": "ViT-B-16", "batch_size": 8192, "lr": 5e-4, "warmup": 500, "samples_seen": 1_280_000_000},
    "xlarge": {
        "model": "ViT-L-14",
        "batch_size": 90112,
        "lr": 1e-3,
        "warmup": 10000,
        "samples_seen": 12_800_000_000,
        "beta2": 0.95,
        # DataComp: amp loses accuracy at this scale
        "precision": "amp_bfloat16",
    },
}
# Keys of the train section that are hyperparameters: what a trained model is a function of (with its data).
HYPERPARAMETERS = (
    "model", "model_config", "batch_size", "lr", "warmup", "beta2", "wd", "samples_seen", "checkpoints", "precision",
    "seed",
)  # fmt: skip


def hyperparameters(train: dict) -> dict:
    """The scale's values with the config's overrides (its non-null keys)."""
    chosen = {"beta2": None, "precision": "amp", **SCALES[train["scale"]]}
    chosen.update({key: train[key] for key in HYPERPARAMETERS if train[key] is not None or key not in chosen})
    if chosen["samples_seen"] < chosen["checkpoints"]:
        raise ClipflowError(
            f"train.samples_seen ({chosen['samples_seen']}) is smaller than train.checkpoints "
            f"({chosen['checkpoints']}): each checkpoint ends an epoch of samples_seen / checkpoints samples"
        )
    return {"scale": train["scale"], **chosen}
