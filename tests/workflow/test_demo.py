"""The README's main job: the demo renders, serves and downloads its own images with no internet, and its own
model makes its searches find what they ask for."""

import json
import re
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from playwright.sync_api import expect

from clipflow import demo
from clipflow.search.query import run_query
from conftest import REPO, free_port, run_snakemake
from served import Server, browser  # noqa: F401 - a fixture

IMAGES = 120


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    port = free_port()
    config["demo"].update(images=IMAGES, port=port)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir, port, run_snakemake(workdir, "--cores", "2")


def test_demo_workflow_end_to_end(demo_run):
    tmp_path, port, result = demo_run

    summary = json.loads((tmp_path / "results/summary/download.json").read_text())
    expected = demo.metadata(IMAGES, port)
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


def wanted(caption: str, color: str, shape: str) -> bool:
    return caption.startswith(f"a {color} {shape} ")


def pool_captions(workdir) -> list[str]:
    return pd.read_parquet(workdir / "results/curate/pool.parquet", columns=["caption"])["caption"].tolist()


def commonest(workdir) -> tuple[str, str]:
    """The colour and shape the pool holds most images of."""
    captions = pool_captions(workdir)
    pairs = [(color, shape) for color in demo.COLORS for shape in demo.SHAPES]
    return max(pairs, key=lambda pair: sum(wanted(caption, *pair) for caption in captions))


def test_the_demo_s_searches_find_what_they_ask_for(demo_run):
    """Every colour and shape the pool holds, asked for by name: the top results (as many as the pool has, up
    to 3) are that colour and that shape. Random weights find ~1 in 40."""
    workdir, _, _ = demo_run
    captions = pool_captions(workdir)
    found = asked = 0
    for color in demo.COLORS:
        for shape in demo.SHAPES:
            present = sum(wanted(caption, color, shape) for caption in captions)
            if not present:
                continue
            results = run_query(workdir / "results/index", f"a {color} {shape}", None, "image", min(3, present))
            found += sum(wanted(result["caption"], color, shape) for result in results)
            asked += min(3, present)
    assert asked > 60 and found / asked >= 0.7, (found, asked)
    color, shape = commonest(workdir)
    command = [sys.executable, "-m", "clipflow.cli", "query", f"a {color} {shape}", "-k", "1"]
    (first,) = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=True).stdout.splitlines()
    assert wanted(json.loads(first)["caption"], color, shape)


def test_the_demo_s_search_page_finds_what_it_is_asked_for(demo_run, browser):  # noqa: F811 - the fixture
    workdir, _, _ = demo_run
    color, shape = commonest(workdir)
    indices = workdir / "indices.json"
    indices.write_text(json.dumps({"demo": {"index": "results/index", "shards": "results/shards"}}))
    server = Server(indices)
    try:
        page = browser.new_page()
        page.goto(server.url + f"/?q=a+{color}+{shape}")
        expect(page.locator(".result .caption").first).to_have_text(re.compile(f"^a {color} {shape} "))  # 1 in 40
    finally:
        server.stop()


def test_demo_captions_describe_the_rendered_images():
    image = demo.render(5)
    spec_caption = demo.caption(5)
    color = next(name for name in demo.COLORS if f" {name} " in f" {spec_caption} ")
    pixels = set(image.get_flattened_data())
    assert demo.COLORS[color] in pixels  # the shape is drawn in the colour the caption names
    assert demo.caption(5) == spec_caption and demo.render(5).tobytes() == image.tobytes()
