"""DataComp's baselines, byte for byte: the datacomp presets' way of working (input.verbatim, filters from the
metadata and its .npz) on the quirky release of datacomp_pool.py gives each baseline's uids.npy exactly as
DataComp's own code wrote it for the same release (tests/data/datacomp/make_expected.py)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import datacomp_pool
from conftest import run_snakemake, write_config

EXPECTED = Path(__file__).parent.parent / "data" / "datacomp"
ASSETS = "assets"
IMAGE_BASED = {
    "kind": "image_based",
    "centroids": f"{ASSETS}/small_centroids.pt",
    "targets": [f"{ASSETS}/{name}" for name in datacomp_pool.IMAGENET_FILES],
}
FILTERS = {
    "basic": {"kind": "basic"},
    "l14_30pct": {"kind": "clip_score", "top_fraction": 0.3, "score_column": "clip_l14_similarity_score"},
    "b32_30pct": {"kind": "clip_score", "top_fraction": 0.3, "score_column": "clip_b32_similarity_score"},
    "l14_024": {"kind": "clip_score", "threshold": 0.24, "score_column": "clip_l14_similarity_score"},
    "b32_028": {"kind": "clip_score", "threshold": 0.28, "score_column": "clip_b32_similarity_score"},
    "english_gcld3": {"kind": "language", "identifier": "gcld3"},
    "text": {
        "kind": "text_synsets",
        "synsets": f"{ASSETS}/imagenet21k_wordnet_ids.txt",
        "wordnet": f"{ASSETS}/nltk_data",
    },
    "image": IMAGE_BASED,
}
# Each baseline by the name make_expected.py saved it under, and the filters that make it here.
BASELINES = {
    "no_filter": [],
    "basic_filter": ["basic"],
    "clip_score_l14_30pct": ["l14_30pct"],
    "clip_score_b32_30pct": ["b32_30pct"],
    "clip_score_l14_threshold_0.24": ["l14_024"],
    "clip_score_b32_threshold_0.28": ["b32_028"],
    "laion2b": ["b32_028", "english_gcld3"],
    "text_based": ["text"],
    "image_based": ["image"],
    "image_based_intersect_clip_score_l14_30pct": ["l14_30pct", "image"],
}


def subset_name(baseline: str) -> str:
    return baseline.replace(".", "_")  # a subset's name is a path segment and a wildcard value


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("datacomp_parity")
    datacomp_pool.write_release(workdir / "data" / "metadata")
    datacomp_pool.write_assets(workdir / ASSETS)
    config = {
        "input": datacomp_pool.preset_input(),
        "plan": {"samples_per_shard": 200},
        "embed": {"model": "ViT-S-32", "pretrained": "none", "precomputed": {"image": "l14_img", "text": "l14_txt"}},
        "curate": {
            "filters": FILTERS,
            "subsets": {subset_name(name): {"filters": filters} for name, filters in BASELINES.items()},
        },
    }
    write_config(workdir, config)
    targets = [f"results/curate/subsets/{subset_name(name)}/uids.npy" for name in BASELINES]
    run_snakemake(workdir, "--cores", "2", *targets)
    return workdir


@pytest.mark.parametrize("baseline", list(BASELINES))
def test_each_baseline_subset_is_byte_identical_to_datacomp(curated, baseline):
    ours = (curated / f"results/curate/subsets/{subset_name(baseline)}/uids.npy").read_bytes()
    expected = (EXPECTED / f"{baseline}.npy").read_bytes()
    assert len(np.load(EXPECTED / f"{baseline}.npy")) > 0
    assert ours == expected, f"{baseline}: {len(ours)} bytes against DataComp's {len(expected)}"


def test_the_verbatim_pool_is_every_metadata_row_as_given(curated):
    metadata = pd.concat(frame for frame, _ in datacomp_pool.release_files())
    pool = pd.read_parquet(curated / "results/curate/pool.parquet", columns=["uid", "caption"])
    assert pool["uid"].tolist() == metadata["uid"].tolist()  # duplicates and bad URLs too, in the files' order
    assert pool["caption"].tolist() == metadata["text"].tolist()  # control characters and all
    assert metadata.duplicated(["url", "text"]).any() and metadata["text"].str.contains("\x00").any()
    state = json.loads((curated / "results/plan/state.json").read_text())
    assert sum(s["duplicates"] for s in state["sources"]) == sum(s["invalid"] for s in state["sources"]) == 0


def test_words_are_counted_as_fasttext_tokenizes():
    """Counts that fastText 0.9.3's `fasttext.tokenize` gives (make_expected.py's SITE): DataComp's image-based
    word count."""
    from clipflow.curate.filters.image_based import fasttext_word_counts

    tokenized = {"a b": 2, "a\nb": 3, " a  b ": 2, "a\x00b": 2, "a\xa0b": 1, "a\x85b": 1, "a\u2003b": 1, "\n": 1}
    tokenized.update({"\n\n x": 3, "a\rb\tc\vd\fe": 5, "a\x1fb": 1, "": 0})
    assert fasttext_word_counts(pd.Series(list(tokenized))).tolist() == list(tokenized.values())
