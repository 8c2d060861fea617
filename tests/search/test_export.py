"""`clipflow filter`: the matching rows to parquet and their images out of the shards."""

import subprocess
import sys

import pandas as pd

from served import CAPTIONS, image_of, indices  # noqa: F401 - the index fixture


def run_filter(indices, output, *args):
    folder = indices.parent
    command = [sys.executable, "-m", "clipflow.cli", "filter", "--index", str(folder / "index")]
    command += ["--shards", str(folder / "shards"), "--output", str(output), *args]
    return subprocess.run(command, capture_output=True, text=True)


def test_top_k_text_matches_with_their_images(indices, tmp_path):
    result = run_filter(indices, tmp_path / "out", CAPTIONS[7], "--modality", "text", "-k", "5")
    assert result.returncode == 0, result.stderr
    assert "5 matches" in result.stdout
    matches = pd.read_parquet(tmp_path / "out/matches.parquet")
    assert matches["rank"].tolist() == [1, 2, 3, 4, 5]
    assert matches["id"].iloc[0] == 7 and matches["caption"].iloc[0] == CAPTIONS[7]
    assert matches["similarity"].is_monotonic_decreasing
    for row in matches.itertuples():
        assert (tmp_path / "out" / row.image_file).read_bytes() == image_of(row.id)
    assert len(list((tmp_path / "out/images").iterdir())) == 5


def test_threshold_keeps_exactly_the_results_above_it(indices, tmp_path):
    (tmp_path / "query.jpg").write_bytes(image_of(11))
    run_filter(indices, tmp_path / "all", "--image", str(tmp_path / "query.jpg"), "-k", "26")
    ranked = pd.read_parquet(tmp_path / "all/matches.parquet")
    cut = float(ranked["similarity"].iloc[3])
    result = run_filter(indices, tmp_path / "above", "--image", str(tmp_path / "query.jpg"), "--threshold", str(cut))
    assert result.returncode == 0, result.stderr
    above = pd.read_parquet(tmp_path / "above/matches.parquet")
    assert above["id"].tolist() == ranked[ranked["similarity"] >= cut]["id"].tolist()
    assert above["id"].iloc[0] == 11 and len(above) >= 4


def test_filter_needs_one_query_and_a_limit(indices, tmp_path):
    result = run_filter(indices, tmp_path / "out", "a query")
    assert result.returncode != 0 and "give -k, --threshold, or both" in result.stderr
    result = run_filter(indices, tmp_path / "out", "-k", "3")
    assert result.returncode != 0 and "give either a text query or --image" in result.stderr
