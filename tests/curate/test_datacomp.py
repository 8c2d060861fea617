"""The DataComp participant's path through Snakemake: metadata with its .npz of precomputed embeddings, filters
and a subset chosen from them before any download, then the download of just that subset, accounted row by row,
and its resharding."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
import webdataset as wds

from clipflow.embed.precomputed import load_arrays
from clipflow.errors import ClipflowError
import datacomp_pool
from conftest import run_snakemake, write_config

WIDTH = 384  # ViT-S-32's embedding width: the service's model for this run


def datacomp_rows(image_server) -> pd.DataFrame:
    """CommonPool-like rows: (path on the test server, caption, metadata size, L14 score)."""
    rows = [
        ("/sized/320x240/1.jpg", "a red fox standing in the snow", (640, 480), 0.35),
        ("/sized/320x240/2.jpg", "a small picture of a sleeping cat", (150, 300), 0.34),  # too small
        ("/sized/320x240/3.jpg", "a very wide panorama of the mountains", (1400, 200), 0.33),  # too wide
        ("/sized/320x240/4.jpg", "two words", (640, 480), 0.32),  # too few words
        ("/sized/320x240/5.jpg", "a golden retriever\x00puppy on\x85the grass", (800, 600), 0.31),  # kept as is
        ("/missing.jpg", "an image that is gone but scores well", (500, 500), 0.30),
        ("/sized/320x240/6.jpg", "a bowl of fruit on a wooden table", (300, 300), 0.20),
        ("/sized/320x240/7.jpg", "a bicycle leaning against a wall", (400, 300), 0.19),
        ("/sized/320x240/8.jpg", "a lighthouse on a rocky coast at dusk", (500, 400), 0.18),
        ("/sized/320x240/9.jpg", "a cup of coffee next to a laptop", (500, 400), 0.17),
        ("/sized/320x240/10.jpg", "two children flying kites in a park", (500, 400), 0.16),
        ("/sized/320x240/11.jpg", "an old map of a harbour town", (500, 400), 0.15),
    ]
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "uid": [f"{rng.integers(2**63):016x}{n:016x}" for n in range(len(rows))],
            "url": [image_server + path for path, *_ in rows],
            "text": [caption for _, caption, *_ in rows],
            "original_width": [size[0] for *_, size, _ in rows],
            "original_height": [size[1] for *_, size, _ in rows],
            "clip_l14_similarity_score": [score for *_, score in rows],
            "clip_b32_similarity_score": [0.30, 0.29, 0.28, 0.27, 0.33, 0.25, 0.31, 0.2, 0.2, 0.29, 0.1, 0.1],
            "face_bboxes": [[[0.1, 0.1, 0.4, 0.4]] if n == 0 else [] for n in range(len(rows))],
            "sha256": [f"{n:064x}" for n in range(len(rows))],
        }
    )


def write_release(folder, metadata: pd.DataFrame, parts: int = 2) -> dict:
    """DataComp's layout: part files with an .npz beside each; returns the embeddings by uid."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    by_uid = {}
    for part, rows in enumerate(np.array_split(metadata, parts)):
        rows.to_parquet(folder / f"part-{part}.parquet", index=False)
        arrays = {name: rng.normal(size=(len(rows), WIDTH)).astype(np.float16) for name in ("l14_img", "l14_txt")}
        np.savez(folder / f"part-{part}.npz", **arrays)
        for i, uid in enumerate(rows["uid"]):
            by_uid[uid] = (arrays["l14_img"][i], arrays["l14_txt"][i])
    return by_uid


@pytest.fixture(scope="module")
def participant(tmp_path_factory, image_server):
    workdir = tmp_path_factory.mktemp("datacomp")
    metadata = datacomp_rows(image_server)
    duplicate = metadata.iloc[[4]].assign(uid="f" * 32)  # the url and caption of row 4: a row of its own
    ftp = metadata.iloc[[0]].assign(uid="e" * 32, url="ftp://127.0.0.1/harbour.jpg", clip_l14_similarity_score=0.36)
    metadata = pd.concat([metadata, duplicate, ftp], ignore_index=True)
    embeddings = write_release(workdir / "data/metadata", metadata)
    config = {
        "input": datacomp_pool.preset_input(),  # verbatim: the pool is every metadata row
        "plan": {"samples_per_shard": 5},
        "download": {"timeout": 2, "threads": 4, "image_size": 64, "bbox_col": "face_bboxes", "subset": "chosen"},
        "embed": {"model": "ViT-S-32", "pretrained": "none", "precomputed": {"image": "l14_img", "text": "l14_txt"}},
        "curate": {
            "filters": {
                "clip": {"kind": "clip_score", "top_fraction": 0.5, "score_column": "clip_l14_similarity_score"},
                "basic": {"kind": "basic"},
            },
            "subsets": {"chosen": {"filters": ["clip", "basic"], "reshard": True}},
            "reshard": {"samples_per_shard": 2, "processes": 1},
        },
    }
    config["curate"]["filters"]["dedup"] = {"kind": "semantic_dedup", "threshold": 0.95}
    config["curate"]["subsets"]["deduplicated"] = {"filters": ["dedup"]}
    write_config(workdir, config)
    run_snakemake(workdir, "--cores", "2")
    return workdir, metadata, embeddings


def test_the_pool_is_every_metadata_row_with_its_precomputed_embeddings(participant):
    workdir, metadata, embeddings = participant
    pool = pd.read_parquet(workdir / "results/curate/pool.parquet")
    assert pool["uid"].tolist() == metadata["uid"].tolist()  # the duplicate and the ftp row too; no download needed
    image = np.concatenate([np.load(p) for p in sorted((workdir / "results/embeddings/image").glob("*.npy"))])
    text = np.concatenate([np.load(p) for p in sorted((workdir / "results/embeddings/text").glob("*.npy"))])
    for row, uid in enumerate(pool["uid"]):
        for stored, given in zip((image[row], text[row]), embeddings[uid]):
            given = given.astype(np.float32) / np.linalg.norm(given.astype(np.float32))
            assert np.allclose(stored.astype(np.float32), given, atol=2e-3)
    assert pool["original_width"].tolist() == [metadata.set_index("uid").loc[u, "original_width"] for u in pool["uid"]]
    index_rows = pd.read_feather(workdir / "results/index/metadata.arrow")
    assert len(index_rows) == len(pool)  # the indices hold the whole pool, from metadata alone
    dedup = pd.read_parquet(workdir / "results/curate/filters/dedup.parquet")  # semantic dedup over it too
    assert dedup["key"].tolist() == pool["key"].tolist() and dedup["keep"].all()  # random vectors: all distinct


def expected_subset(metadata: pd.DataFrame) -> set:
    """DataComp's selection restated: top half by L14 score (int(n f) + 1 rows at the cut), and the basic rules."""
    scores = metadata["clip_l14_similarity_score"].to_numpy()
    clip = scores >= -np.sort(-scores)[int(len(scores) * 0.5)]
    width, height = metadata["original_width"], metadata["original_height"]
    words = metadata["text"].str.split().str.len()
    basic = (words > 2) & (metadata["text"].str.len() > 5) & (np.minimum(width, height) >= 200)
    basic &= np.maximum(width, height) / np.minimum(width, height) <= 3
    return set(metadata["uid"][clip & basic.to_numpy()])


def test_only_the_subset_is_downloaded_and_every_row_is_accounted_for(participant):
    workdir, metadata, _ = participant
    kept = pd.read_parquet(workdir / "results/curate/subsets/chosen/kept.parquet")
    assert set(kept["uid"]) == expected_subset(metadata)
    assert len(kept) == 5  # fox, retriever and its duplicate, the ftp row, and the row whose image is gone

    summary = json.loads((workdir / "results/summary/download.json").read_text())
    assert summary["input_rows"] == len(metadata) and summary["duplicates_dropped"] == summary["invalid_dropped"] == 0
    assert summary["filtered_out"] == {"clip": 6, "basic": 3}  # the first filter that removed each row
    assert summary["downloaded"] == 3 and summary["failed"] == {"http 404": 1}
    assert summary["not_fetched"] == {"unsupported URL scheme 'ftp': only http, https and data URLs are fetched": 1}

    results = pd.concat(pd.read_parquet(p) for p in sorted((workdir / "results/shards").glob("*.parquet")))
    filtered = results[results["status"] == "filtered"]
    assert set(filtered["uid"]) == set(metadata["uid"]) - set(kept["uid"])
    assert filtered["error_message"].str.fullmatch("filtered out by (clip|basic)").all()
    assert filtered["url"].str.startswith("http://").all()  # the row's own url, though it was not fetched
    tars = sorted(str(p) for p in (workdir / "results/shards").glob("*.tar"))
    downloaded = [json.loads(s["json"]) for s in wds.WebDataset(tars, shardshuffle=False)]
    assert {d["uid"] for d in downloaded} == set(kept["uid"]) - {metadata["uid"][5], "e" * 32}
    not_fetched = results[results["status"] == "not fetched"]
    assert not_fetched["uid"].tolist() == ["e" * 32] and not_fetched["url"].tolist() == [metadata["url"].iat[-1]]
    pool = pd.read_parquet(workdir / "results/curate/pool.parquet").set_index("uid")
    assert all(pool.loc[d["uid"], "key"] == d["key"] for d in downloaded)  # the key the embeddings gave it
    captions = metadata.set_index("uid")["text"]
    assert all(d["caption"] == captions[d["uid"]] for d in downloaded)  # a NUL and a U+0085 stay in the shards


def test_the_subset_reshards_what_was_downloaded(participant):
    workdir, metadata, _ = participant
    record = json.loads((workdir / "results/curate/subsets/chosen/shards/reshard.json").read_text())
    assert record["samples"] == 3 and record["kept_not_downloaded"] == 2
    assert "Nothing to be done" in run_snakemake(workdir, "--dry-run").stdout


def test_precomputed_arrays_are_checked_against_their_metadata(tmp_path):
    metadata = pd.DataFrame({"uid": ["a" * 32, "b" * 32], "url": ["http://h/1", "http://h/2"], "text": ["x", "y"]})
    metadata.to_parquet(tmp_path / "m.parquet")
    np.savez(tmp_path / "m.npz", l14_img=np.zeros((3, 4)), l14_txt=np.zeros((2, 4)))
    arrays = {"image": "l14_img", "text": "l14_txt"}
    with pytest.raises(ClipflowError, match=r"m.npz: array 'l14_img' has shape \(3, 4\), where .* has 2 rows"):
        load_arrays(str(tmp_path / "m.parquet"), arrays, 2)
    with pytest.raises(ClipflowError, match=r"m.npz: no array 'b32_img' for embed.precomputed"):
        load_arrays(str(tmp_path / "m.parquet"), {"image": "b32_img", "text": "l14_txt"}, 2)
    with pytest.raises(ClipflowError, match=r"other.npz: no such file"):
        load_arrays(str(tmp_path / "other.parquet"), arrays, 2)


def test_a_wider_subset_downloads_again_only_the_shards_whose_rows_it_changes(participant):
    """Last in this module: it changes the run. One more row passes the CLIP score cut: its shard alone is
    downloaded again; the others keep their files."""
    workdir, metadata, _ = participant
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["curate"]["filters"]["clip"]["top_fraction"] = 0.6  # int(14 x 0.6) + 1 = 9 rows: the fruit bowl too
    write_config(workdir, config)
    before = {shard: (workdir / f"results/shards/{shard}.tar").stat().st_mtime_ns for shard in ("00000000", "00000002")}
    run_snakemake(workdir, "--cores", "2")
    log = (workdir / "logs/download/00000000.log").read_text()
    assert "shard 00000000 is complete, kept" in log and "shard 00000002 is complete, kept" in log
    assert "shard 00000001: downloading" in log
    assert all((workdir / f"results/shards/{s}.tar").stat().st_mtime_ns == t for s, t in before.items())
    summary = json.loads((workdir / "results/summary/download.json").read_text())
    assert summary["filtered_out"] == {"clip": 5, "basic": 3} and summary["downloaded"] == 4
