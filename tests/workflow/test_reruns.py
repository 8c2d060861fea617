"""Reruns only when an output would change: on a finished run, settings that only size or schedule work
rerun nothing, and each setting that changes outputs reruns exactly the jobs that depend on it."""

import copy
import json

import pytest
import yaml

from clipflow.config import SIZING
from conftest import free_port, planned_jobs, run_snakemake, small_run_config, write_config

DOWNLOADS = ["download_batch[00000000]", "download_batch[00000001]", "list_batches", "summarize_downloads"]
EMBEDDINGS = ["embed_chunk[00000000]", "list_chunks", "summarize_embeddings"]
INDICES = ["list_training_chunks"] + [
    f"{rule}[{modality}]" for rule in ("index_train", "index_add", "list_index_parts", "index_merge")
    for modality in ("image", "text")
]  # fmt: skip
INDEX_VECTORS = ["index_vectors[image]", "index_vectors[text]"]
NEAR_DUPLICATES = [  # the demo's semantic_dedup filter, as jobs: one embedding chunk, two cluster groups
    "near_duplicate_centroids[near_duplicates]",
    "near_duplicate_assign[near_duplicates]",
    "list_near_duplicate_assignments[near_duplicates]",
    "near_duplicate_pairs[near_duplicates]",
    "near_duplicate_pairs[near_duplicates]",
    "near_duplicate_decide[near_duplicates]",
]
CURATION = [
    "curate_pool",
    *NEAR_DUPLICATES,
    *(f"curate_filter[{name}]" for name in ("basic", "clip_top_half", "near_duplicates", "round_shapes")),
    "curate_subset[clip_basic_dedup]",
    "curate_subset[round_shapes]",
    "reshard[clip_basic_dedup]",
]
TRAINING = ["train[clip_basic_dedup]", "evaluate[clip_basic_dedup]", "compare_subsets"]
HOLDOUT = ["held_out_rows", "holdout_dataset"]
EVERYTHING_AFTER_DOWNLOAD = [
    *EMBEDDINGS, *INDICES, *INDEX_VECTORS, "index_metadata", *CURATION, *HOLDOUT, *TRAINING, "summarize_benchmarks",
    "all",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reruns")
    config = small_run_config(free_port())
    write_config(workdir, config)
    run_snakemake(workdir, "--cores", "2")
    return workdir, config


def jobs_with(workdir, config, *args) -> tuple[list[str], str]:
    """The jobs a dry run with `config` would run, as rule[wildcards], and its output."""
    (workdir / "changed.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "--dry-run", "--configfile", str(workdir / "changed.yaml"), *args)
    out = result.stdout + result.stderr
    return planned_jobs(out), out


def changed(config: dict, key: str, value) -> dict:
    config = copy.deepcopy(config)
    *sections, name = key.split(".")
    target = config
    for section in sections:
        target = target.setdefault(section, {})
    target[name] = value
    return config


def a_different_value(key: str, value):
    if key == "embed.device":
        return "cpu"
    if key == "embed.cache_dir":
        return "elsewhere/models"
    return value * 2 if value else 1


def test_every_sizing_setting_changed_at_once_reruns_nothing(finished_run):
    workdir, config = finished_run
    from clipflow.config import validate_config

    defaults = validate_config(copy.deepcopy(config))
    resized = config
    keys = [f"{section}.{key}" for section, keys in SIZING.items() for key in keys]
    for key in keys:
        *sections, name = key.split(".")
        current = defaults
        for section in sections:
            current = current[section]
        resized = changed(resized, key, a_different_value(key, current[name]))
    jobs, out = jobs_with(workdir, resized)
    assert jobs == [], f"changing {keys} reran {jobs}:\n{out[-3000:]}"
    assert "Nothing to be done" in out


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("download.image_size", 96, [*DOWNLOADS, *EVERYTHING_AFTER_DOWNLOAD]),
        ("embed.model", "ViT-B-32", ["fetch_model", *EVERYTHING_AFTER_DOWNLOAD]),
        ("embed.precision", "bf16", EVERYTHING_AFTER_DOWNLOAD),
        (
            "index.max_index_query_time_ms",
            5,
            ["index_merge[image]", "index_merge[text]", "summarize_benchmarks", "all"],
        ),
        (
            "curate.filters.clip_top_half",
            {"kind": "clip_score", "top_fraction": 0.3},
            [
                "curate_filter[clip_top_half]",
                "curate_subset[clip_basic_dedup]",
                "reshard[clip_basic_dedup]",
                *TRAINING,
                "summarize_benchmarks",
                "all",
            ],
        ),
        (
            "curate.reshard.samples_per_shard",
            7,
            ["reshard[clip_basic_dedup]", *TRAINING, "summarize_benchmarks", "all"],
        ),
        ("train.lr", 0.002, [*TRAINING, "summarize_benchmarks", "all"]),
        (
            "evaluate.holdout_fraction",
            0.3,
            [
                *HOLDOUT,
                "curate_subset[clip_basic_dedup]",
                "curate_subset[round_shapes]",
                "reshard[clip_basic_dedup]",
                *TRAINING,
                "summarize_benchmarks",
                "all",
            ],
        ),
    ],
)
def test_an_output_setting_reruns_exactly_its_dependent_jobs(finished_run, key, value, expected):
    workdir, config = finished_run
    jobs, out = jobs_with(workdir, changed(config, key, value))
    assert jobs == sorted(expected), out[-3000:]


def test_a_changed_filter_reruns_for_real_then_nothing(finished_run):
    workdir, config = finished_run
    subset = workdir / "results/curate/subsets/clip_basic_dedup/summary.json"
    before = json.loads(subset.read_text())["kept"]
    write_config(workdir, changed(config, "curate.filters.clip_top_half", {"kind": "clip_score", "top_fraction": 0.2}))
    run_snakemake(workdir, "--cores", "2")
    assert json.loads(subset.read_text())["kept"] < before
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(run_snakemake(workdir, "--dry-run"))
