"""The presets under config/presets: each plans and dry-runs on synthetic metadata with its release's columns,
with only input.paths edited."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, run_snakemake

PRESETS = sorted((REPO / "config" / "presets").glob("*.yaml"))
ROWS = 25


def datacomp_metadata(rows: int) -> pd.DataFrame:
    """CommonPool's metadata columns (DataComp's parquet), with made-up values."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "uid": [f"{rng.integers(2**63):016x}{n:016x}" for n in range(rows)],
            "url": [f"http://127.0.0.1:9/{n}.jpg" for n in range(rows)],
            "text": [f"a photo of thing {n}" for n in range(rows)],
            "original_width": rng.integers(100, 2000, rows),
            "original_height": rng.integers(100, 2000, rows),
            "face_bboxes": [[[0.1, 0.1, 0.3, 0.4]] if n % 3 == 0 else [] for n in range(rows)],
            "sha256": [f"{n:064x}" for n in range(rows)],
            "clip_b32_similarity_score": rng.uniform(0.1, 0.4, rows),
            "clip_l14_similarity_score": rng.uniform(0.1, 0.4, rows),
        }
    )


def laion_metadata(rows: int) -> pd.DataFrame:
    """LAION-2B-en's columns."""
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "SAMPLE_ID": np.arange(rows),
            "URL": [f"http://127.0.0.1:9/{n}.jpg" for n in range(rows)],
            "TEXT": [f"a photo of thing {n}" for n in range(rows)],
            "HEIGHT": rng.integers(100, 2000, rows),
            "WIDTH": rng.integers(100, 2000, rows),
            "LICENSE": ["?"] * rows,
            "NSFW": ["UNLIKELY"] * rows,
            "similarity": rng.uniform(0.28, 0.4, rows),
        }
    )


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_preset_dry_runs_on_its_release_columns(tmp_path, preset):
    config = yaml.safe_load(preset.read_text())
    (path,) = config["input"]["paths"]
    metadata = laion_metadata(ROWS) if preset.stem == "laion" else datacomp_metadata(ROWS)
    target = tmp_path / path.replace("*", "part-00000")
    target.parent.mkdir(parents=True)
    metadata.to_parquet(target)
    (tmp_path / "config.yaml").write_text(preset.read_text())  # as shipped: its paths are relative ones

    result = run_snakemake(tmp_path, "--dry-run")
    jobs = result.stdout
    embedding = "precomputed_chunk" if config["embed"].get("precomputed") else "embed_chunk"
    for rule in ("download_batch", embedding, "index_train", "index_add", "index_merge", "curate_subset", "reshard"):
        assert rule in jobs, rule
    assert not (tmp_path / "results").exists(), "the dry run wrote results"  # it planned in a temporary folder
    plan = [sys.executable, "-m", "clipflow.cli", "plan", "--config", "config.yaml"]
    assert subprocess.run(plan, cwd=tmp_path, capture_output=True, text=True).returncode == 0
    planned = yaml.safe_load((tmp_path / "results/plan/state.json").read_text())
    assert planned["sources"][0]["rows"] == ROWS
    shard = pd.read_parquet(tmp_path / "results/plan/shards/00000000.parquet")
    kept = config["input"]["keep_cols"]
    assert set(kept) <= set(shard.columns)
    if "face_bboxes" in kept:
        assert [list(map(list, boxes)) for boxes in shard["face_bboxes"]] == metadata["face_bboxes"].tolist()


def test_a_datacomp_preset_that_trains_refuses_to_start_without_the_evaluation_sets(tmp_path):
    preset = REPO / "config" / "presets" / "datacomp_small.yaml"
    config = yaml.safe_load(preset.read_text())
    target = tmp_path / config["input"]["paths"][0].replace("*", "part-00000")
    target.parent.mkdir(parents=True)
    datacomp_metadata(ROWS).to_parquet(target)
    config["train"]["subsets"] = ["clip_score_l14_30pct"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    result = run_snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "evaluate.data_dir data/evalsets lacks 38 of DataComp's 38 evaluation sets: Caltech-101" in message
    assert "python download_evalsets.py data/evalsets" in message
    assert not (tmp_path / "results").exists()  # refused before anything is planned
