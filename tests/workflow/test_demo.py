"""The README's main job: the demo renders, serves and downloads its own images with no internet."""

import json
import socket

import numpy as np
import pytest
import yaml

from clipflow import demo
from conftest import REPO, free_port, run_snakemake


def test_demo_workflow_end_to_end(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    port = free_port()
    config["demo"].update(images=120, port=port)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "--cores", "2")

    summary = json.loads((tmp_path / "results/summary/download.json").read_text())
    expected = demo.metadata(120, port)
    assert summary["input_rows"] == len(expected)
    assert summary["duplicates_dropped"] == expected.duplicated().sum() > 0
    assert summary["invalid_dropped"] == 1
    distinct = expected.drop_duplicates()["url"]
    missing = distinct.str.contains("/missing/").sum()
    truncated = distinct.str.contains("/images/.*-truncated").sum()
    assert missing > 0 and truncated > 0
    assert summary["failed"] == {"http 404": missing, "truncated image": truncated}
    assert summary["downloaded"] == len(distinct) - 1 - missing - truncated
    assert "input rows" in result.stdout + result.stderr

    curated = tmp_path / "results/curate/subsets/clip_basic_dedup"
    curation = json.loads((curated / "summary.json").read_text())
    assert curation["pool"] == summary["downloaded"] and 0 < curation["kept"] < curation["pool"]
    assert len(np.load(curated / "uids.npy")) == curation["kept"]
    resharded = json.loads((curated / "shards/reshard.json").read_text())
    assert resharded["samples"] == curation["kept"] and (curated / "shards/00000000.tar").exists()

    with pytest.raises(ConnectionRefusedError):  # the workflow stopped its server
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(run_snakemake(tmp_path, "--cores", "2"))


def test_demo_captions_describe_the_rendered_images():
    image = demo.render(5)
    spec_caption = demo.caption(5)
    color = next(name for name in demo.COLORS if f" {name} " in f" {spec_caption} ")
    pixels = set(image.get_flattened_data())
    assert demo.COLORS[color] in pixels  # the shape is drawn in the colour the caption names
    assert demo.caption(5) == spec_caption and demo.render(5).tobytes() == image.tobytes()
