"""DataComp's image-based baseline: keep English captions of more than one word and five characters whose image
embedding's nearest pool centroid is one that an ImageNet-1k image embedding is nearest to.

The two assets are DataComp's files (or .npy arrays of the same): the k-means centroids of the pool's ViT-L-14
image embeddings (`{scale}_centroids`, a torch-saved array) and the ViT-L-14 image embeddings of ImageNet-1k's
training images (`in1k_clip_vit_l14_{0..4}`, torch-saved dicts with `image_features`; several files are joined).
The pool's image embeddings must be ViT-L-14's, as with `embed.precomputed: {image: l14_img, ...}`.
"""

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter, first_failures
from clipflow.curate.filters.basic import LANGUAGE_OPTIONS, language_checks, language_model_files
from clipflow.errors import ClipflowError

BATCH = 65_536  # rows compared with the centroids at once: 65,536 x centroids float32


def load_vectors(path: str) -> np.ndarray:
    """A 2-D float array from a .npy file or a torch file (an array, a tensor, or a dict with image_features)."""
    try:
        if Path(path).suffix == ".npy":
            value = np.load(path)
        else:
            import torch

            value = torch.load(path, map_location="cpu", weights_only=False)  # DataComp's files hold numpy arrays
            if isinstance(value, dict):
                value = value["image_features"]
            value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise ClipflowError(f"image_based filter: cannot read {path}: {error}") from None
    if value.ndim != 2:
        raise ClipflowError(f"image_based filter: {path} holds shape {value.shape}, not one vector per row")
    return value.astype(np.float32)


def fasttext_word_counts(captions: pd.Series) -> np.ndarray:
    """Words per caption as `len(fasttext.tokenize(caption))` counts them, DataComp's count in this baseline:
    fastText's tokenizer ends words at ASCII space, tab, vertical tab, form feed, carriage return and NUL only
    (not at NBSP, U+0085 or the U+2000 spaces, as str.split does), and gives each newline a word of its own,
    the end-of-line token."""
    words = captions.str.count(r"[^ \t\n\v\f\r\x00]+") + captions.str.count("\n")
    return words.to_numpy(dtype=np.int64)


def nearest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each vector's centroid of highest inner product (DataComp's assignment), in batches."""
    found = np.empty(len(vectors), np.int64)
    for start in range(0, len(vectors), BATCH):
        found[start : start + BATCH] = (np.asarray(vectors[start : start + BATCH], np.float32) @ centroids.T).argmax(1)
    return found


class ImageBased(Filter):
    kind = "image_based"
    description = "DataComp's image-based baseline: captions in English, images in clusters near ImageNet-1k"
    required = ("centroids", "targets")
    options_schema = {
        "centroids": {"description": "the pool's k-means centroids (DataComp's {scale}_centroids)", "type": "string"},
        "targets": {
            "description": "ImageNet-1k image embeddings (DataComp's in1k_clip_vit_l14_0..4), one file or several",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
        },
        **LANGUAGE_OPTIONS,
    }

    def _targets(self) -> list[str]:
        targets = self.options["targets"]
        return [targets] if isinstance(targets, str) else list(targets)

    def assets(self) -> list[str]:
        return [self.options["centroids"], *self._targets(), *language_model_files(self.options)]

    def embeddings(self) -> str | None:
        return "image"

    @functools.cached_property
    def clusters(self) -> tuple[np.ndarray, np.ndarray]:
        """The centroids, and those nearest to an ImageNet target."""
        centroids = load_vectors(self.options["centroids"])
        targets = np.concatenate([load_vectors(path) for path in self._targets()])
        if targets.shape[1] != centroids.shape[1]:
            raise ClipflowError(
                f"image_based filter: the targets are {targets.shape[1]}-d and the centroids {centroids.shape[1]}-d"
            )
        return centroids, np.unique(nearest(targets, centroids))

    def resolve(self, pool) -> dict:
        centroids, chosen = self.clusters
        return {"clusters": len(centroids), "imagenet_clusters": len(chosen)}

    def decide(self, rows, embeddings, resolved) -> Decision:
        centroids, chosen = self.clusters
        captions = rows["caption"].fillna("")
        checks = {
            "caption of one word": fasttext_word_counts(captions) <= 1,
            "caption too short": (captions.str.len() <= 5).to_numpy(),
        }
        checks.update(language_checks(captions, self.options))
        if embeddings.shape[1] != centroids.shape[1]:
            raise ClipflowError(
                f"image_based filter: the pool's image embeddings are {embeddings.shape[1]}-d and the centroids "
                f"{centroids.shape[1]}-d: the centroids belong to another model (DataComp's: ViT-L-14)"
            )
        checks["image far from ImageNet"] = ~np.isin(nearest(embeddings, centroids), chosen)
        reason = first_failures(checks, len(rows))
        return Decision(reason.isna().to_numpy(), reason)
