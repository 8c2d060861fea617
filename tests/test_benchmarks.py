"""Every benchmark under bench/ runs once at a tiny size and prints its figures, so that none breaks unseen. The
two that need the demo workflow's results (embed_index, serve_load) run in tests/workflow/test_workflow.py, on
its finished run."""

import subprocess
import sys

import pytest
from conftest import REPO

TINY = {
    "bulk_cache.py": ["--shards", "2", "--rows", "100", "--dim", "16", "--group", "64", "--cache-gb", "0.000001", "1"],
    "bulk_dry_run.py": ["--shards", "8", "--shards-per-job", "4", "8"],
    "dag_scale.py": ["--shards", "4"],
    "download_overhead.py": ["--shards", "1", "--per-shard", "20", "--images", "5", "--threads", "2", "--repeats", "1"],
    "embed_throughput.py": ["--samples", "16", "--shards", "2", "--workers", "1", "--batch-size", "8"]
    + ["--models", "ViT-S-32"],
    "image_check.py": ["--images", "2"],
    "index_jobs.py": ["--sizes", "20000", "--sets", "isotropic", "--queries", "10", "--shards-per-chunk", "1"]
    + ["--skip-autofaiss", "--config", str(REPO / "config/config.yaml")],
    "object_storage.py": ["--sizes", "3000", "--queries", "10"],
    "plan_scale.py": ["--rows", "2000", "--files", "2", "--processes", "1"],
    "rerank.py": ["--sizes", "2000", "--factors", "1", "2", "--queries", "10"]
    + ["--config", str(REPO / "config/config.yaml")],
    "semantic_dedup.py": ["--rows", "4000", "--shard-rows", "1000", "--shards-per-chunk", "2", "--cluster-groups", "2"],
    "takedowns.py": ["--rows", "5000", "--fractions", "0.001", "0.01", "--queries", "10"],
}
ON_THE_DEMO_RUN = {"embed_index.py", "serve_load.py"}


def test_every_benchmark_is_smoke_tested():
    assert {path.name for path in (REPO / "bench").glob("*.py")} == set(TINY) | ON_THE_DEMO_RUN


@pytest.mark.parametrize("script", sorted(TINY))
def test_a_benchmark_runs_at_a_tiny_size(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *TINY[script]], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert any(character.isdigit() for character in result.stdout), result.stdout  # it printed figures
