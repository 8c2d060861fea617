"""The workflow end to end against a real HTTP server on 127.0.0.1: every row ends in its right state."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import urllib.request

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds
from nbclient import NotebookClient

from clipflow.download.accounting import failure_reason
from clipflow.embed.model import load_model
from clipflow.index.folder import ClipIndex
from conftest import REPO, planned_jobs, run_snakemake, write_config

# (path on the test server, caption, expected final state)
ROWS = [
    ("/good/0.jpg", "a plain good image", "success"),
    ("/good/1.jpg", "another good image", "success"),
    ("/missing.jpg", "gone", "http 404"),
    ("/error.jpg", "server error", "http 500"),
    ("/slow.jpg", "answers after the timeout", "timeout"),
    ("/truncated.jpg", "jpeg cut inside its headers", "truncated image"),
    ("/page.jpg", "html instead of an image", "not an image"),
    ("/huge.jpg", "a 6000x4000 image", "success"),
    ("/redirect.jpg", "redirects to a good image", "success"),
    ("/noai.jpg", "X-Robots-Tag says noai", "disallowed by X-Robots-Tag"),
    ("/good/2.jpg", "caf\xe9 latin-1 caption", "success"),
    ("/good/0.jpg", "a plain good image", "duplicate"),
    ("", "a row without a url", "invalid"),
    ("/good/3.jpg", "good again", "success"),
    ("/good/1.jpg", "another good image", "duplicate"),
    ("/cut-scan.jpg", "jpeg cut in the middle of its scan", "truncated image"),
    ("/short-length.jpg", "a Content-Length below the real length", "truncated image"),
    ("/corrupt-scan.jpg", "garbage inside the scan and the end marker whole", "damaged image"),
    ("/drip.jpg", "a byte every 0.2 s and each read within the timeout", "deadline exceeded"),
    ("/rotated.jpg", "exif orientation 6", "success"),
    ("/animated.gif", "an animated gif", "success"),
    ("/gzip.jpg", "a gzip-encoded body", "success"),
    ("/brotli.jpg", "a br-encoded body", "unsupported Content-Encoding 'br'"),
    ("/named/with space.jpg", "a raw space in the url", "success"),
    ("/named/caf\xe9 \u2615.jpg", "raw non-ascii characters in the url", "success"),
    ("file:///etc/hostname", "a local file", "invalid"),
    ("/good/5.jpg", "red car\x00 parked", "success"),
] + [
    (f"/gone/{i}.jpg", f"lost image {i}", "http 404") for i in range(5)
]  # the last shard fails whole


def write_metadata(path: Path, server: str, rows) -> None:
    """A CSV in UTF-8 but for the latin-1 caption, which is not valid UTF-8, as in real scraped metadata."""
    lines = [b"url,caption"]
    for url, caption, _ in rows:
        line = f"{server + url if url.startswith('/') else url},{caption}"
        lines.append(line.encode("latin-1" if "latin-1" in caption else "utf-8"))
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, image_server):
    workdir = tmp_path_factory.mktemp("workflow")
    write_metadata(workdir / "metadata.csv", image_server, ROWS)
    config = {
        "input": {"paths": ["metadata.csv"]},
        "plan": {"samples_per_shard": 5},
        "download": {"timeout": 2, "deadline": 3, "threads": 8, "image_size": 64, "shards_per_job": 2},
        "embed": {"model": "ViT-S-32", "pretrained": "none", "batch_size": 4, "workers": 1, "shards_per_job": 2},
    }
    write_config(workdir, config)
    result = run_snakemake(workdir, "--cores", "2")
    return workdir, result


def shard_results(workdir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((workdir / "results/shards").glob("*.parquet"))])


def test_download_and_embedding_logs_say_how_far_and_what_failed(workflow_run):
    """Each shard's last line counts its rows and failures by the accounting's reasons; each embedding job says
    what it embeds and how many samples it got through."""
    workdir, _ = workflow_run
    for parquet in sorted((workdir / "results/shards").glob("*.parquet")):
        shard, results = parquet.stem, pd.read_parquet(parquet)
        failed = results[results["status"] != "success"]
        reasons = Counter(failure_reason(s, m) for s, m in zip(failed["status"], failed["error_message"]))
        logs = "".join(path.read_text() for path in (workdir / "logs/download").glob("*.log"))
        (line,) = [line for line in logs.splitlines() if f"shard {shard}: {len(results)} of" in line]
        assert f"{len(results)} of {len(results)} rows (100%)" in line and "done in" in line, line
        if reasons:
            commonest = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:5]
            listed = ", ".join(f"{reason} {count}" for reason, count in commonest)
            assert f"{len(failed)} failed ({listed})" in line, line
        else:
            assert "failed" not in line, line
    embedded = "".join(path.read_text() for path in (workdir / "logs/embed").glob("*.log"))
    assert re.search(r"embedding 2 shards from \d+\.tar: \d+ samples on cpu, batches of 4", embedded), embedded[-2000:]


def test_status_agrees_with_the_download_summary(workflow_run):
    workdir, _ = workflow_run
    summary = json.loads((workdir / "results/summary/download.json").read_text())
    result = clipflow_cli("status", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["input_rows"] == summary["input_rows"] and status["duplicates"] == summary["duplicates_dropped"]
    assert status["download"]["successes"] == summary["downloaded"] == status["embedding"]["samples"]
    assert status["download"]["failures"] == summary["failed"]
    assert status["download"]["shards_done"] == status["shards"] == status["embedding"]["shards_done"]
    assert status["index"]["image"]["vectors"] == summary["downloaded"] and not status["running"]
    assert status["failed_jobs"] == [] and status["steps"][0] == status["steps"][1]
    printed = clipflow_cli("status", cwd=workdir).stdout
    assert f"downloaded   {status['shards']} of {status['shards']} shards" in printed
    assert "no run in progress" in printed


def test_every_row_ends_in_its_expected_state(workflow_run, image_server):
    workdir, _ = workflow_run
    results = shard_results(workdir)
    assert len(results) == sum(state not in ("duplicate", "invalid") for *_, state in ROWS)
    for path, caption, expected in ROWS:
        if expected in ("duplicate", "invalid"):
            continue
        row = results[(results["url"] == image_server + path) & (results["caption"] == clean(caption))].iloc[0]
        state = "success" if row["status"] == "success" else failure_reason(row["status"], row["error_message"])
        assert state == expected, (path, row["status"], row["error_message"])
    dropped = pd.read_parquet(workdir / "results/plan/dropped/00000.parquet")
    assert sorted(dropped["state"]) == ["duplicate", "duplicate", "invalid", "invalid"]
    not_planned = [i for i, (*_, state) in enumerate(ROWS) if state in ("duplicate", "invalid")]
    assert sorted(dropped["source_row"]) == not_planned
    file_row = next(i for i, (url, *_) in enumerate(ROWS) if url.startswith("file:"))
    assert dropped.set_index("source_row").loc[file_row, "reason"].startswith("unsupported URL scheme 'file'")


def clean(caption: str) -> str:
    """The caption as stored: control characters as spaces, latin-1 bytes as replacement characters."""
    return re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", " ", caption).replace("\xe9 latin-1", "\ufffd latin-1")


def test_a_caption_keeps_what_follows_a_nul(workflow_run, image_server):
    workdir, _ = workflow_run
    assert shard_results(workdir).set_index("caption").loc["red car  parked", "status"] == "success"
    samples = wds.WebDataset(sorted(str(p) for p in (workdir / "results/shards").glob("*.tar")), shardshuffle=False)
    assert "red car  parked" in {s["txt"].decode() for s in samples}


def stored_image(workdir: Path, url: str) -> np.ndarray:
    row = shard_results(workdir).set_index("url").loc[url]
    samples = wds.WebDataset(str(workdir / f"results/shards/{row['key'][:8]}.tar"), shardshuffle=False)
    sample = next(s for s in samples.decode("rgb8") if s["__key__"] == row["key"])
    return sample["jpg"]


def test_images_are_stored_upright_and_as_their_first_frame(workflow_run, image_server):
    workdir, _ = workflow_run
    rotated = stored_image(workdir, image_server + "/rotated.jpg").astype(int)  # 64x64, white left and right
    red, blue = np.array([220, 20, 20]), np.array([20, 20, 220])
    assert np.abs(rotated[32, 40] - red).max() < 40 and np.abs(rotated[32, 22] - blue).max() < 40
    assert np.abs(rotated[32, 1] - 255).max() < 10  # the border: the image stood upright, 3:4
    first_frame = stored_image(workdir, image_server + "/animated.gif").astype(int)
    assert np.abs(first_frame[32, 32] - red).max() < 40


def test_non_utf8_caption_keeps_its_row(workflow_run, image_server):
    workdir, _ = workflow_run
    row = shard_results(workdir).set_index("url").loc[image_server + "/good/2.jpg"]
    assert row["status"] == "success"
    assert row["caption"] == "caf\ufffd latin-1 caption"


def test_summary_adds_up_per_shard_and_in_total(workflow_run):
    workdir, result = workflow_run
    summary = json.loads((workdir / "results/summary/download.json").read_text())
    expected_failed = {}
    for *_, state in ROWS:
        if state not in ("success", "duplicate", "invalid"):
            expected_failed[state] = expected_failed.get(state, 0) + 1
    assert summary["input_rows"] == len(ROWS)
    assert summary["duplicates_dropped"] == 2
    assert summary["invalid_dropped"] == 2
    assert summary["downloaded"] == sum(state == "success" for *_, state in ROWS)
    assert summary["failed"] == expected_failed
    assert [s["shard"] for s in summary["shards"]] == [f"{n:08d}" for n in range(6)]
    assert summary["shards"][-1]["downloaded"] == 0
    for shard in summary["shards"]:
        stats = json.loads((workdir / f"results/shards/{shard['shard']}_stats.json").read_text())
        assert shard["downloaded"] == stats["successes"]
        assert shard["planned"] == shard["downloaded"] + sum(shard["failed"].values()) == stats["count"]
    assert (workdir / "results/summary/download.png").stat().st_size > 10_000
    assert "disallowed by X-Robots-Tag" in result.stdout + result.stderr  # the accounting is printed


def test_shards_are_valid_webdatasets_with_uids(workflow_run):
    workdir, _ = workflow_run
    tars = sorted(str(p) for p in (workdir / "results/shards").glob("*.tar"))
    assert [Path(t).name for t in tars] == [f"{n:08d}.tar" for n in range(6)]
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    results = shard_results(workdir)
    successes = results[results["status"] == "success"]
    assert len(samples) == len(successes)
    assert len({s["__key__"] for s in samples}) == len(samples)  # keys unique across shards
    assert sorted(s["json"]["uid"] for s in samples) == sorted(successes["uid"])
    for sample in samples:
        assert max(sample["jpg"].size) <= 64
        assert sample["txt"] == sample["json"]["caption"]
    huge = next(s for s in samples if s["json"]["url"].endswith("/huge.jpg"))
    assert (huge["json"]["original_width"], huge["json"]["original_height"]) == (6000, 4000)


def jobs_in_dry_run(workdir: Path) -> list[str]:
    result = run_snakemake(workdir, "--dry-run", "--cores", "1")
    out = result.stdout + result.stderr
    assert "Building DAG of jobs" in out
    return planned_jobs(out)


# --- embeddings, indices, queries -------------------------------------------------------------


def embedded(workdir: Path):
    """The concatenated embeddings and metadata of every shard, in index order."""
    shards = sorted(p.stem for p in (workdir / "results/shards").glob("*.tar"))
    load = lambda kind: np.concatenate([np.load(workdir / f"results/embeddings/{kind}/{s}.npy") for s in shards])
    metadata = pd.concat([pd.read_parquet(workdir / f"results/embeddings/metadata/{s}.parquet") for s in shards])
    return load("image"), load("text"), metadata.reset_index(drop=True)


def test_embeddings_are_normalized_float16_aligned_with_downloads(workflow_run):
    workdir, _ = workflow_run
    image, text, metadata = embedded(workdir)
    successes = shard_results(workdir).query("status == 'success'")
    assert image.dtype == text.dtype == np.float16 and image.shape == text.shape == (len(successes), 384)
    assert np.allclose(np.linalg.norm(image.astype(np.float32), axis=1), 1, atol=2e-3)
    assert sorted(metadata["uid"]) == sorted(successes["uid"])
    assert list(metadata.columns) == ["uid", "url", "caption", "key", "shard"]
    for parquet in sorted((workdir / "results/shards").glob("*.parquet")):  # each tar pairs with its embeddings
        downloaded = pd.read_parquet(parquet).query("status == 'success'")
        rows = pd.read_parquet(workdir / f"results/embeddings/metadata/{parquet.stem}.parquet")
        assert sorted(rows["key"]) == sorted(downloaded["key"]) and set(rows["shard"]) <= {parquet.stem}
        assert len(np.load(workdir / f"results/embeddings/image/{parquet.stem}.npy")) == len(rows)
    info = json.loads((workdir / "results/embeddings/info/00000004.json").read_text())
    assert info["shards"] == ["00000004", "00000005"]  # shard 5's downloads all failed: it adds no rows
    assert info["per_shard"] == {"00000004": int((metadata["shard"] == "00000004").sum()), "00000005": 0}
    assert info["provenance"]["random_weights"] is True and info["provenance"]["versions"]["open_clip"]


def test_each_row_finds_itself_first_from_its_own_image_and_caption(workflow_run):
    """Re-embeds every row's image (from its tar) and caption; any shuffle between rows would show."""
    workdir, _ = workflow_run
    _, _, metadata = embedded(workdir)
    index = ClipIndex(workdir / "results/index")
    model = load_model(workdir / "results/index/model.json")
    tars = sorted(str(p) for p in (workdir / "results/shards").glob("*.tar"))
    images = {s["__key__"]: s["jpg"] for s in wds.WebDataset(tars, shardshuffle=False).decode("pil")}
    pixels = torch.stack([model.preprocess(images[key]) for key in metadata["key"]])
    image_vectors = model.encode_images(pixels).numpy()
    text_vectors = model.encode_texts(model.tokenizer(metadata["caption"].tolist())).numpy()
    for modality, vectors in (("image", image_vectors), ("text", text_vectors)):
        _, ids = index.search(vectors, modality, 1)
        assert ids[:, 0].tolist() == list(range(len(metadata))), modality
        found = index.rows(ids[:, 0])
        assert [r["uid"] for r in found] == metadata["uid"].tolist()
        assert [(r["url"], r["caption"]) for r in found] == list(zip(metadata["url"], metadata["caption"]))


def test_exact_index_matches_brute_force(workflow_run):
    workdir, _ = workflow_run
    image, _, _ = embedded(workdir)
    index = ClipIndex(workdir / "results/index")
    assert json.loads((workdir / "results/index/image.infos.json").read_text())["index_key"] == "IVF1,Flat"
    queries = np.random.default_rng(0).standard_normal((20, image.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = 5
    similarities, ids = index.search(queries, "image", k)
    brute = queries @ image.astype(np.float32).T
    assert ids.tolist() == np.argsort(-brute, axis=1)[:, :k].tolist()
    assert np.allclose(similarities, np.sort(brute, axis=1)[:, ::-1][:, :k], atol=1e-5)
    # the index folder lists the stored embeddings behind it, in id order; a flat index has nothing to re-rank
    np.testing.assert_array_equal(index.stored("image").take(np.arange(len(image))), image.astype(np.float32))
    assert not index.reranks("image")


def clipflow_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "clipflow.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_query_cli_text_image_file_and_url(workflow_run, image_server):
    workdir, _ = workflow_run
    result = clipflow_cli("query", "another good image", "--modality", "text", "-k", "3", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "IO_FLAG" not in result.stderr and "INFO" not in result.stderr  # faiss's and its loader's lines
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["rank"] for r in lines] == [1, 2, 3] and lines[0]["caption"] == "another good image"
    assert lines[0]["similarity"] >= lines[1]["similarity"] >= lines[2]["similarity"]
    assert set(lines[0]) == {"rank", "similarity", "id", "uid", "url", "caption"}

    image_file = workdir / "query.jpg"
    image_file.write_bytes(urllib.request.urlopen(image_server + "/good/1.jpg").read())
    by_file = clipflow_cli("query", "--image", str(image_file), "-k", "1", cwd=workdir)
    by_url = clipflow_cli("query", "--image", image_server + "/good/1.jpg", "-k", "1", "--format", "table", cwd=workdir)
    assert by_file.returncode == by_url.returncode == 0, by_file.stderr + by_url.stderr
    assert json.loads(by_file.stdout)["url"] == image_server + "/good/1.jpg"
    assert "another good image" in by_url.stdout.splitlines()[1]


def test_query_cli_bad_inputs(workflow_run, tmp_path, image_server):
    workdir, _ = workflow_run
    missing = clipflow_cli("query", "--index", str(tmp_path / "nowhere"), "a cat", cwd=workdir)
    assert missing.returncode == 1 and "nowhere: not an index folder" in missing.stderr
    (tmp_path / "notes.txt").write_text("not an image")
    unreadable = clipflow_cli("query", "--image", str(tmp_path / "notes.txt"), cwd=workdir)
    assert unreadable.returncode == 1 and "notes.txt: cannot read an image" in unreadable.stderr
    gone = clipflow_cli("query", "--image", image_server + "/missing.jpg", cwd=workdir)
    assert gone.returncode == 1 and "missing.jpg: cannot read an image: HTTP Error 404" in gone.stderr
    neither = clipflow_cli("query", cwd=workdir)
    assert neither.returncode == 1 and "give either a text query or --image" in neither.stderr


def files_and_times(workdir: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob("*") if ".snakemake" not in p.parts}


def test_deleting_one_chunks_embeddings_reruns_it_and_the_index_only(workflow_run):
    workdir, _ = workflow_run
    (workdir / "results/embeddings/image/00000002.npy").unlink()
    before = files_and_times(workdir)
    listed = jobs_in_dry_run(workdir)
    assert files_and_times(workdir) == before, "the dry run changed files"  # the chunk's record stays
    assert listed == [
        "all",
        "embed_chunk[00000002]",
        "index_add[image]",
        "index_add[text]",
        "index_merge[image]",
        "index_merge[text]",
        "index_metadata",
        "index_vectors[image]",
        "index_vectors[text]",
        "list_chunks",
        "list_index_parts[image]",
        "list_index_parts[text]",
        "summarize_benchmarks",
        "summarize_embeddings",
    ]
    run_snakemake(workdir, "--cores", "2")
    assert jobs_in_dry_run(workdir) == []


def test_embedding_summary_and_report(workflow_run):
    workdir, _ = workflow_run
    summary = json.loads((workdir / "results/summary/embeddings.json").read_text())
    assert summary["embedded"] == len(embedded(workdir)[2]) and summary["decode_failed"] == 0
    assert [job["chunk"] for job in summary["jobs"]] == ["00000000", "00000002", "00000004"]
    assert -1 <= summary["image_text_similarity"]["mean"] <= 1
    run_snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text()
    assert all(name in html for name in ("download.png", "embedding_throughput.png", "image_text_similarity.png"))
    assert "status.html" in html  # the page of `clipflow status`
    page = (workdir / "results/summary/status.html").read_text()
    status = json.loads(clipflow_cli("status", "--json", cwd=workdir).stdout)
    assert f"downloaded   {status['shards']} of {status['shards']} shards" in page and "FAILED" not in page


def test_exploration_notebook_runs_against_the_index(workflow_run, monkeypatch):
    workdir, _ = workflow_run
    monkeypatch.setenv("CLIPFLOW_INDEX", str(workdir / "results/index"))
    notebook = nbformat.read(REPO / "notebooks/exploration.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # two result grids, one histogram
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "ViT-S-32 (RANDOM WEIGHTS)" in printed and "mean " in printed


def test_rerun_is_a_no_op(workflow_run):
    workdir, _ = workflow_run
    assert jobs_in_dry_run(workdir) == []
    result = run_snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_truncated_tar_is_found_and_downloaded_again_alone(workflow_run):
    workdir, _ = workflow_run
    shards = workdir / "results/shards"
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()}
    tar = shards / "00000001.tar"
    os.truncate(tar, tar.stat().st_size // 2)
    verified = clipflow_cli("verify", str(shards), cwd=workdir)
    assert verified.returncode == 1 and "00000001: damaged" in verified.stdout, verified.stdout + verified.stderr
    filtered = clipflow_cli("filter", "anything", "-k", "50", "--output", "out", "--shards", str(shards), cwd=workdir)
    assert (
        filtered.returncode == 1 and "00000001.tar: damaged" in filtered.stderr and "Traceback" not in filtered.stderr
    )
    # Its batch (shards 0 and 1) runs again but keeps shard 0; the chunk holding it is embedded again.
    # The first chunk is also what the index trains on: it trains again, and every part is added again.
    assert jobs_in_dry_run(workdir) == [
        "all",
        "download_batch[00000000]",
        "embed_chunk[00000000]",
        *["index_add[image]"] * 3,  # three chunks
        *["index_add[text]"] * 3,
        "index_merge[image]",
        "index_merge[text]",
        "index_metadata",
        "index_train[image]",
        "index_train[text]",
        "index_vectors[image]",
        "index_vectors[text]",
        "list_batches",
        "list_chunks",
        "list_index_parts[image]",
        "list_index_parts[text]",
        "list_training_chunks",
        "summarize_benchmarks",
        "summarize_downloads",
        "summarize_embeddings",
    ]
    run_snakemake(workdir, "--cores", "2")
    after = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()}
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["00000001.parquet", "00000001.tar", "00000001_stats.json"]
    assert (shards / "00000001.tar").exists()


def test_new_input_file_adds_shards_without_renumbering(workflow_run, image_server):
    workdir, _ = workflow_run
    extra = [("/good/10.jpg", "a new image", "success"), ("/good/3.jpg", "good again", "duplicate")]
    write_metadata(workdir / "more.csv", image_server, extra)
    config_path = workdir / "config.yaml"
    config_path.write_text(config_path.read_text().replace("- metadata.csv", "- metadata.csv\n  - more.csv"))
    jobs = jobs_in_dry_run(workdir)
    assert [job for job in jobs if job.startswith(("download", "embed"))] == [
        "download_batch[00000006]",
        "embed_chunk[00000006]",
    ]
    run_snakemake(workdir, "--cores", "2")
    summary = json.loads((workdir / "results/summary/download.json").read_text())
    assert summary["input_rows"] == len(ROWS) + 2
    assert summary["duplicates_dropped"] == 3
    assert pd.read_parquet(workdir / "results/plan/shards/00000006.parquet")["url"].tolist() == [
        image_server + "/good/10.jpg"
    ]


def test_killed_download_leaves_no_complete_shard(tmp_path, image_server):
    rows = [("/slow.jpg", "slow", "timeout"), ("/good/5.jpg", "fine", "success")]
    write_metadata(tmp_path / "metadata.csv", image_server, rows)
    embed = {"model": "ViT-S-32", "pretrained": "none"}
    write_config(tmp_path, {"input": {"paths": ["metadata.csv"]}, "download": {"timeout": 30}, "embed": embed})
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    command += ["--configfile", str(tmp_path / "config.yaml"), "--cores", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "logs/download/00000000.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "shard 00000000: downloading" in log.read_text()):
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.2)
    time.sleep(1)  # the slow image is being fetched now
    status = clipflow_cli("status", cwd=tmp_path).stdout
    assert "a run is in progress" in status and "downloading now: 00000000" in status, status
    assert "downloaded   0 of 1 shards" in status, status
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not list((tmp_path / "results/shards").glob("00000000*")), "a killed download left shard files"
    assert "download_batch[00000000]" in jobs_in_dry_run(tmp_path)


def test_a_truncated_index_file_is_refused_by_name_and_written_again(workflow_run):
    workdir, _ = workflow_run
    index = workdir / "results/index"
    lists, text_index, metadata = index / "image.ivfdata", index / "text.index", index / "metadata.arrow"
    part = sorted((index / "image/parts").glob("*.index"))[0]
    os.truncate(lists, lists.stat().st_size // 2)  # searched through a memory map: a bus error, unchecked
    os.truncate(text_index, text_index.stat().st_size - 100)
    query = clipflow_cli("query", "another good image", cwd=workdir)
    assert query.returncode == 1 and "Traceback" not in query.stderr, query.stderr
    assert f"damaged index: results/index/image.ivfdata: {lists.stat().st_size} bytes" in query.stderr
    by_text = clipflow_cli("query", "another good image", "--modality", "text", cwd=workdir)
    assert by_text.returncode == 1 and "Traceback" not in by_text.stderr
    assert "results/index/text.index: " in by_text.stderr
    os.truncate(metadata, metadata.stat().st_size - 100)  # mapped too
    by_metadata = clipflow_cli("query", "another good image", "--modality", "text", cwd=workdir)
    assert by_metadata.returncode == 1 and "Traceback" not in by_metadata.stderr
    assert "damaged index metadata: results/index/metadata.arrow: " in by_metadata.stderr
    os.truncate(part, part.stat().st_size - 8)  # read by the next merge
    verified = clipflow_cli("verify", str(index), cwd=workdir)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    damaged = [line.split(": damaged")[0] for line in verified.stdout.splitlines() if ": damaged" in line]
    records = ["metadata.infos.json", "image.infos.json", "text.infos.json", f"image/parts/{part.stem}.json"]
    assert sorted(damaged) == sorted(str(index / record) for record in records), verified.stdout
    parts = len(list(index.glob("image/parts/*.json")))
    assert f"{3 + 2 * (1 + parts)} index records checked: 4 damaged" in verified.stdout  # merges, metadata, trained
    assert jobs_in_dry_run(workdir) == [
        "all",
        "index_add[image]",
        "index_merge[image]",
        "index_merge[text]",
        "index_metadata",
        "list_index_parts[image]",
        "summarize_benchmarks",
    ]
    run_snakemake(workdir, "--cores", "2")
    assert jobs_in_dry_run(workdir) == []
    assert clipflow_cli("verify", str(index), cwd=workdir).returncode == 0
    assert clipflow_cli("query", "another good image", cwd=workdir).returncode == 0


def test_verify_finds_an_embedding_changed_in_place_and_the_next_run_embeds_it_again(workflow_run):
    """Same size, other bytes: only the sha256 in the chunk's record tells."""
    workdir, _ = workflow_run
    embeddings = workdir / "results/embeddings"
    vectors = sorted((embeddings / "image").glob("*.npy"))[0]
    original = vectors.read_bytes()
    vectors.write_bytes(original[:-2] + bytes(2))
    chunks = len(list((embeddings / "info").glob("*.json")))
    verified = clipflow_cli("verify", str(embeddings), "--remove-damaged", cwd=workdir)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert f"{vectors}: its sha256 is not the one written" in verified.stdout
    assert f"{chunks} embedding records checked: 1 damaged" in verified.stdout
    assert "embed_chunk" in " ".join(jobs_in_dry_run(workdir))
    run_snakemake(workdir, "--cores", "2")
    assert vectors.read_bytes() == original  # the same model on the same images
    assert clipflow_cli("verify", str(embeddings), cwd=workdir).returncode == 0
    assert jobs_in_dry_run(workdir) == []


@pytest.mark.parametrize(
    "script, arguments, figures",
    [
        ("embed_index.py", ["--sizes", "2000", "--queries", "10", "--model", "ViT-S-32", "--config", "config.yaml"],
         "samples/s"),
        ("serve_load.py", ["--demo-index", "results/index", "--vectors", "2000", "--clients", "1", "--seconds", "1"],
         "q/s"),
    ],
)  # fmt: skip
def test_the_benchmarks_of_the_demo_run_run_on_it(workflow_run, script, arguments, figures, tmp_path):
    """tests/test_benchmarks.py runs the other benchmarks; these two read a finished run's shards and index."""
    workdir, _ = workflow_run
    if script == "serve_load.py":
        arguments = [*arguments, "--cache", str(tmp_path)]
    command = [sys.executable, str(REPO / "bench" / script), *arguments]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert figures in result.stdout, result.stdout
