"""Near-duplicate removal as jobs decides exactly as near_duplicates() does in one process: called directly on
shard files, and through Snakemake on a pool with precomputed embeddings."""

import numpy as np
import pandas as pd
import pytest

from clipflow.curate import near_duplicate_jobs as jobs
from clipflow.curate.near_duplicates import near_duplicates
from clipflow.embed import embedding_files
from conftest import planned_jobs, precomputed_config, run_snakemake, write_config, write_precomputed_input


def clustered_rows(rows: int, width: int, seed: int) -> np.ndarray:
    """Unit rows around 20 centres (cosine ~0.5 within one), with near-copies (cosine ~0.99) of earlier rows,
    copies of copies among them, as fp16 like the workflow's embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, width))
    vectors = centres[rng.integers(0, 20, rows)] + rng.standard_normal((rows, width))
    for copy in np.sort(rng.choice(np.arange(1, rows), rows // 20, replace=False)):
        vectors[copy] = vectors[rng.integers(0, copy)] + 0.1 * rng.standard_normal(width) / np.sqrt(width) * 10
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def run_jobs(folder, chunks: dict, options: dict, groups: int) -> np.ndarray:
    """The four kinds of job, one call per job, as the rules make them."""
    shards = [shard for chunk in chunks.values() for shard in chunk]
    out = folder / "near_duplicates"
    out.mkdir()
    jobs.write_centroids(folder, shards, options, out / "centroids.npy", out / "layout.json")
    layout = jobs.read_layout(out / "layout.json")
    centroids = np.load(out / "centroids.npy")
    for chunk, chunk_shards in chunks.items():
        (out / chunk).mkdir()
        names = {name: out / chunk / f"{name}.npy" for name in ("vectors", "rows", "bounds")}
        jobs.write_assignment(folder, chunk_shards, options["modality"], layout, centroids, names)
    pair_files = [{"pairs": out / f"pairs{g}.npy", "bounds": out / f"bounds{g}.npy"} for g in range(groups)]
    for group, names in enumerate(pair_files):
        jobs.write_pairs([out / chunk for chunk in chunks], layout, group, groups, options["threshold"], names)
    jobs.write_decisions(pair_files, layout, out / "duplicate_of.npy")
    return np.load(out / "duplicate_of.npy")


def test_jobs_decide_exactly_as_one_process(tmp_path, monkeypatch):
    """Shards of uneven sizes (one empty) in three chunks, 24 clusters over 5 groups, greedy ranges of 500 rows:
    every row's decision is the one-process one, and the planted copies are found."""
    monkeypatch.setattr(jobs, "RANGE_ROWS", 500)
    sizes = [700, 0, 300, 450, 1000, 51, 499]
    vectors = clustered_rows(sum(sizes), 32, seed=3)
    (tmp_path / "image").mkdir()
    shards = [f"{n:08d}" for n in range(len(sizes))]
    parts = np.split(vectors, np.cumsum(sizes)[:-1])
    for shard, part in zip(shards, parts):
        np.save(tmp_path / "image" / f"{shard}.npy", part)
    options = {"threshold": 0.95, "modality": "image", "rows_per_cluster": 125, "max_clusters": 24, "seed": 7}
    chunks = {"00000000": shards[:2], "00000002": shards[2:5], "00000005": shards[5:]}

    distributed = run_jobs(tmp_path, chunks, options, groups=5)
    single = near_duplicates(parts, 0.95, rows_per_cluster=125, max_clusters=24, seed=7)
    assert jobs.read_layout(tmp_path / "near_duplicates/layout.json")["clusters"] == 24
    assert 100 < (single >= 0).sum() < 1000  # enough decisions, some of them chains, for the comparison to bite
    np.testing.assert_array_equal(distributed, single)


def test_one_cluster_and_an_empty_pool(tmp_path):
    vectors = clustered_rows(300, 16, seed=4)
    (tmp_path / "text").mkdir()
    np.save(tmp_path / "text/00000000.npy", vectors)
    options = {"threshold": 0.95, "modality": "text", "rows_per_cluster": 1000, "max_clusters": 10, "seed": 0}
    distributed = run_jobs(tmp_path, {"00000000": ["00000000"]}, options, groups=3)
    np.testing.assert_array_equal(distributed, near_duplicates([vectors], 0.95))
    assert (distributed >= 0).sum() > 0

    empty = tmp_path / "empty"
    (empty / "text").mkdir(parents=True)
    np.save(empty / "text/00000000.npy", np.empty((0, 16), np.float16))
    assert len(run_jobs(empty, {"00000000": ["00000000"]}, options, groups=2)) == 0


@pytest.fixture(scope="module")
def deduplicated(tmp_path_factory):
    """2,000 rows with precomputed embeddings (nothing to download), 8 shards in 4 embedding chunks, 16
    clusters in 3 groups; the run stops at the filter."""
    workdir = tmp_path_factory.mktemp("near_duplicates")
    write_precomputed_input(workdir, "part-0", 0, clustered_rows(2000, 384, seed=5))
    config = precomputed_config(
        curate={
            "filters": {"dedup": {"kind": "semantic_dedup", "threshold": 0.95, "rows_per_cluster": 125}},
            "subsets": {"deduplicated": {"filters": ["dedup"]}},
            "near_duplicates": {"cluster_groups": 3},
        }
    )
    write_config(workdir, config)
    target = "results/curate/filters/dedup.parquet"
    dry = run_snakemake(workdir, "--dry-run", target)
    run_snakemake(workdir, "--cores", "2", target)
    return workdir, planned_jobs(dry.stdout + dry.stderr)


def test_workflow_runs_dedup_as_jobs_and_decides_as_one_process(deduplicated):
    workdir, planned = deduplicated
    assert [job for job in planned if job.startswith(("near_duplicate", "list_near"))] == sorted(
        ["near_duplicate_centroids[dedup]", "list_near_duplicate_assignments[dedup]", "near_duplicate_decide[dedup]"]
        + [f"near_duplicate_assign[dedup]"] * 4
        + [f"near_duplicate_pairs[dedup]"] * 3
    )
    shards = [f"{n:08d}" for n in range(8)]
    parts = [np.load(path) for path in embedding_files(workdir / "results/embeddings", shards, "image")]
    single = near_duplicates(parts, 0.95, rows_per_cluster=125)
    table = pd.read_parquet(workdir / "results/curate/filters/dedup.parquet")
    np.testing.assert_array_equal(~table["keep"].to_numpy(), single >= 0)
    assert table["detail"][single >= 0].tolist() == [str(row) for row in single[single >= 0]]
    assert (single >= 0).sum() > 50


def test_regrouping_the_pairs_reruns_only_the_pairs_and_what_follows(deduplicated):
    workdir, _ = deduplicated
    config = (workdir / "config.yaml").read_text().replace("cluster_groups: 3", "cluster_groups: 2")
    (workdir / "regrouped.yaml").write_text(config)
    result = run_snakemake(
        workdir, "--dry-run", "results/curate/filters/dedup.parquet", "--configfile", str(workdir / "regrouped.yaml")
    )
    assert planned_jobs(result.stdout + result.stderr) == sorted(
        ["curate_filter[dedup]", "near_duplicate_decide[dedup]"] + ["near_duplicate_pairs[dedup]"] * 2
    )
