"""The config is checked against its schema before any work, with messages that name the key."""

import subprocess
import sys

import pytest
import yaml
from clipflow.config import DOWNLOAD_COLUMNS, load_config, schema
from clipflow.curate.filters import KINDS
from clipflow.errors import ClipflowError
from conftest import REPO, run_snakemake, write_config


def test_defaults_fill_every_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"input": {"paths": ["m.csv"]}}))
    config = load_config(path)
    assert config["plan"]["samples_per_shard"] == 10_000
    assert config["download"]["disallowed_header_directives"] == ["noai", "noimageai", "noindex", "noimageindex"]
    assert config["input"]["uid_col"] is None and config["demo"]["enabled"] is False


def test_shipped_config_is_valid():
    assert load_config(REPO / "config" / "config.yaml")["demo"]["enabled"] is True


@pytest.mark.parametrize(
    "config, named",
    [
        ({"input": {"paths": ["m.csv"]}, "plan": {"sampels_per_shard": 10}}, "sampels_per_shard"),
        ({"input": {"paths": ["m.csv"]}, "download": {"timeout": "fast"}}, "timeout"),
        ({"input": {"paths": ["m.csv"], "format": "xlsx"}}, "format"),
        ({"input": {"paths": []}}, "paths"),
        ({"inputs": {"paths": ["m.csv"]}}, "inputs"),
        ({"input": {"paths": ["m.csv"]}, "curate": {"filters": {"f": {"kind": "clip_scor"}}}}, "curate.filters.f.kind"),
        (
            {"input": {"paths": ["m.csv"]}, "curate": {"filters": {"f": {"kind": "basic", "min_word": 2}}}},
            r"curate.filters.f: .*'min_word' was unexpected",
        ),
        (
            {"input": {"paths": ["m.csv"]}, "curate": {"subsets": {"s": {"filters": ["nope"]}}}},
            r"curate.subsets.s.filters names \['nope'\]",
        ),
        (
            {"input": {"paths": ["m.csv"]}, "download": {"shards_per_job": 3}, "embed": {"shards_per_job": 4}},
            r"embed.shards_per_job \(4\) must be a multiple of download.shards_per_job \(3\)",
        ),
        (
            {"input": {"paths": ["m.parquet"], "keep_cols": ["original_width", "original_height", "sha256"]}},
            r"input.keep_cols: \['original_width', 'original_height', 'sha256'\] are written by the download",
        ),
        (
            {"input": {"paths": ["m.parquet"]}, "download": {"bbox_col": "face_bboxes"}},
            r"download.bbox_col \('face_bboxes'\) must be one of input.keep_cols",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path, config, named):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ClipflowError, match=named):
        load_config(path)


def test_workflow_stops_on_a_typo_before_any_work(tmp_path):
    write_config(tmp_path, {"input": {"paths": ["m.csv"]}, "dowload": {"threads": 4}})
    result = run_snakemake(tmp_path, "--cores", "1", check=False)
    assert result.returncode != 0
    assert "'dowload' was unexpected" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_workflow_reports_a_missing_url_column_before_any_work(tmp_path):
    (tmp_path / "m.csv").write_text("link,caption\nhttp://a/1.jpg,x\n")
    write_config(tmp_path, {"input": {"paths": ["m.csv"]}})
    result = run_snakemake(tmp_path, "--cores", "1", check=False)
    assert result.returncode != 0
    assert "m.csv: no column 'url' for input.url_col" in result.stdout + result.stderr
    assert not (tmp_path / "results/shards").exists()


def test_plan_command(tmp_path):
    (tmp_path / "m.csv").write_text("url,caption\nhttp://a/1.jpg,x\nhttp://a/1.jpg,x\n,y\n")
    write_config(tmp_path, {"input": {"paths": ["m.csv"]}})
    run = [sys.executable, "-m", "clipflow.cli", "plan", "--config", "config.yaml"]
    result = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 shards; 3 input rows: 1 planned, 1 duplicates and 1 invalid rows dropped" in result.stdout
    (tmp_path / "m.csv").write_text("url\n")
    result = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "clipflow: error: m.csv: changed since it was planned" in result.stderr


def test_each_filter_kind_brings_its_options_into_the_schema():
    entry = schema()["properties"]["curate"]["properties"]["filters"]["additionalProperties"]
    assert (
        entry["properties"]["kind"]["enum"]
        == sorted(KINDS)
        == [
            "aesthetic",
            "basic",
            "clip_score",
            "image_based",
            "language",
            "semantic_dedup",
            "text_based",
            "text_synsets",
            "unsafe",
        ]
    )
    basic = next(rule["then"] for rule in entry["allOf"] if rule["if"]["properties"]["kind"]["const"] == "basic")
    assert basic["properties"]["min_side"]["default"] == 200


def test_keep_cols_refused_are_those_img2dataset_refuses():
    from img2dataset.main import arguments_validator

    def refused(column):
        try:
            arguments_validator({"compute_hash": "sha256", "verify_hash": None, "save_additional_columns": [column]})
        except ValueError:
            return True
        return False

    assert all(refused(column) for column in DOWNLOAD_COLUMNS)
    assert not refused("face_bboxes") and not refused("uid")
