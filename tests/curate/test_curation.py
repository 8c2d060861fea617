"""Curation filters, subset files, near-duplicate removal and resharding on crafted rows with known answers."""

import io
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from clipflow.config import validate_config
from clipflow.curate import pool as pool_module
from clipflow.curate.filters import TABLE_SCHEMA, run_filter
from clipflow.curate.filters.basic import basic_filter
from clipflow.curate.filters.clip_score import top_fraction_threshold
from clipflow.curate.filters.text_based import read_vocabulary, text_based_filter
from clipflow.errors import ClipflowError
from clipflow.shards import ShardReader, plan_keys
from clipflow.curate.reshard import reshard
from clipflow.curate.near_duplicates import near_duplicates
from clipflow.curate.subset import SortedUidWriter, examples, uid_array, write_subset
from conftest import jpeg, run_snakemake, write_config, write_shard

BASIC = {
    "min_words": 3,
    "min_chars": 6,
    "min_side": 200,
    "max_aspect_ratio": 3,
    "languages": ["en"],
    "language_model": None,
}


def filter_pool(tmp_path, pool: pd.DataFrame, options: dict) -> tuple[pd.DataFrame, dict]:
    """A filter run as its job runs it, over `pool` written in row groups of 3 rows: its table and record."""
    pool = pool.assign(key=[f"{i:04d}" for i in range(len(pool))])
    pool.to_parquet(tmp_path / "pool.parquet", row_group_size=3)
    info = run_filter(options, tmp_path / "pool.parquet", None, tmp_path / "table.parquet")
    return pd.read_parquet(tmp_path / "table.parquet"), info


def clip_score(threshold=None, top_fraction=None, score_column="clip_score") -> dict:
    return {"kind": "clip_score", "threshold": threshold, "top_fraction": top_fraction, "score_column": score_column}


def test_clip_score_threshold_keeps_rows_at_or_above_it(tmp_path):
    scores = np.array([0.1, 0.25, 0.3, 0.24999, 0.5], np.float32)
    table, info = filter_pool(tmp_path, pd.DataFrame({"uid": list("abcde"), "clip_score": scores}), clip_score(0.25))
    assert table["keep"].tolist() == [False, True, True, False, True] and info["threshold"] == 0.25
    assert (info["rows"], info["kept"], info["removed"]) == (5, 3, 2)


def datacomp_top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """DataComp's selection (baselines/apply_filter.py, get_threshold then >=), restated to check ours."""
    n = int(len(scores) * fraction)
    return scores >= -np.sort(-scores)[n]


@pytest.mark.parametrize("rows, fraction, kept", [(284, 0.5, 143), (20, 0.3, 7), (100, 0.3, 31), (7, 0.9, 7)])
def test_clip_score_top_fraction_keeps_the_rows_datacomp_keeps(tmp_path, rows, fraction, kept):
    scores = np.random.default_rng(rows).permutation(rows).astype(np.float64) / rows
    pool = pd.DataFrame({"uid": [str(i) for i in range(rows)], "clip_score": scores})
    table, info = filter_pool(tmp_path, pool, clip_score(top_fraction=fraction))
    keep, threshold = table["keep"].to_numpy(), info["threshold"]
    assert keep.sum() == kept and (keep == datacomp_top_fraction(scores, fraction)).all()
    assert scores[keep].min() == threshold and scores[~keep].max(initial=-1) < threshold
    assert top_fraction_threshold(lambda: [scores], 1.0) == scores.min()


@pytest.mark.parametrize("seed", range(4))
def test_top_fraction_threshold_is_exact_over_batches_with_ties_and_signs(seed):
    """The radix selection over float64 bits, in batches, equals sorting: negative and positive scores, -0.0 and
    0.0, ties, denormals and values that differ in their last bit."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate(
        [rng.normal(0, 1, 500), [0.0, -0.0, 5e-324, -5e-324, 1.0, np.nextafter(1.0, 2), -1.0], np.full(50, 0.25)]
    )
    rng.shuffle(scores)
    batches = np.array_split(scores, 7)
    for fraction in (0.001, 0.1, 0.3, 0.5, 0.9, 1.0):
        expected = -np.sort(-scores)[min(int(len(scores) * fraction), len(scores) - 1)]
        assert top_fraction_threshold(lambda: iter(batches), fraction) == expected
    assert top_fraction_threshold(lambda: [np.zeros(0)], 0.3) is None


@pytest.mark.parametrize("threshold, fraction", [(None, None), (0.2, 0.3)])
def test_clip_score_needs_exactly_one_rule(tmp_path, threshold, fraction):
    with pytest.raises(ClipflowError, match="exactly one"):
        filter_pool(tmp_path, pd.DataFrame({"uid": ["a"], "clip_score": [0.5]}), clip_score(threshold, fraction))


def test_pool_is_written_shard_by_shard_in_row_groups(tmp_path, monkeypatch):
    """Each shard's rows with their clip_score and the plan's metadata columns, joined by key, in shard order and
    row groups of POOL_ROWS; a column that is all nulls in one shard takes the type the others give it."""
    monkeypatch.setattr(pool_module, "POOL_ROWS", 4)
    rng = np.random.default_rng(0)
    shards, expected = [], []
    for number, rows in enumerate((3, 0, 6, 2)):
        shard = f"{number:08d}"
        keys = plan_keys(shard, max(rows, 1))[:rows]
        pd.DataFrame({"key": keys, "uid": [f"{shard}-{i}" for i in range(rows)]}).to_parquet(
            tmp_path / f"{shard}.m.parquet"
        )
        vectors = rng.standard_normal((2, rows, 8))
        vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
        for name, part in zip(("image", "text"), vectors):
            np.save(tmp_path / f"{shard}.{name}.npy", part.astype(np.float16))
        width = [None] * rows if number == 0 else list(range(rows))
        pd.DataFrame({"width": pd.Series(width, dtype=object)}).to_parquet(tmp_path / f"{shard}.parquet")
        shards.append(
            {
                **{kind: tmp_path / f"{shard}.{kind}.npy" for kind in ("image", "text")},
                "metadata": tmp_path / f"{shard}.m.parquet",
                "plan": tmp_path / f"{shard}.parquet",
                "download": None,
            }
        )
        scores = (vectors[0].astype(np.float16).astype(np.float32) * vectors[1].astype(np.float16)).sum(1)
        expected += [(key, f"{shard}-{i}", scores[i], width[i]) for i, key in enumerate(keys)]
    assert pool_module.write_pool(shards, ["width"], {}, tmp_path / "pool.parquet") == 11
    pool = pq.ParquetFile(tmp_path / "pool.parquet")
    assert [pool.metadata.row_group(g).num_rows for g in range(pool.num_row_groups)] == [4, 4, 3]
    assert pool.schema_arrow.field("width").type == pa.int64()
    frame = pd.concat(pool_module.pool_batches(tmp_path / "pool.parquet"))
    assert frame.index.tolist() == list(range(11))  # indexed by pool row
    assert frame["key"].tolist() == [row[0] for row in expected] and frame["uid"].tolist() == [
        row[1] for row in expected
    ]
    np.testing.assert_allclose(frame["clip_score"], [row[2] for row in expected], atol=1e-3)
    assert [None if pd.isna(w) else w for w in frame["width"]] == [row[3] for row in expected]
    assert not (tmp_path / "pool.parquet.parts").exists()


def basic_rows() -> pd.DataFrame:
    rows = [  # caption, original width, height, first failing check or None
        ("a red fox standing in the snow", 640, 480, None),
        ("a fox", 640, 480, "too few words"),
        ("a b c", 640, 480, "caption too short"),
        ("a tiny thumbnail of a cat", 150, 120, "image too small"),
        ("a short side of exactly two hundred pixels", 300, 200, None),
        ("a very wide panorama of the mountains", 1400, 400, "aspect ratio too large"),
        ("a tall banner that is three times as high", 300, 900, None),
        ("ein kleiner Hund spielt im Garten mit einem roten Ball", 640, 480, "not in en"),
        ("un petit chien joue dans le jardin avec une balle rouge", 640, 480, "not in en"),
        ("a photo with no size recorded at all", None, None, "image too small"),
    ]
    return pd.DataFrame(rows, columns=["caption", "original_width", "original_height", "expected"])


def test_basic_filter_checks_words_length_size_aspect_and_language():
    rows = basic_rows()
    keep, reason = basic_filter(rows, BASIC)
    assert keep.tolist() == rows["expected"].isna().tolist()
    assert reason.tolist() == rows["expected"].tolist()


def test_basic_filter_without_language_identification_keeps_other_languages():
    rows = basic_rows()
    keep, _ = basic_filter(rows, {**BASIC, "languages": []})
    assert keep[7] and keep[8]


def test_text_based_filter_matches_whole_words_and_phrases():
    captions = pd.Series(
        ["A Golden Retriever on grass", "a golden sunset", "my cat sleeps", "category theory", "CATS", None]
    )
    keep, matched = text_based_filter(captions, ["cat", "golden retriever", "tabby cat"])
    assert keep.tolist() == [True, False, True, False, False, False]
    assert matched.tolist()[:3] == ["golden retriever", None, "cat"]


def test_vocabulary_file_takes_comma_separated_synonyms(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("tench, Tinca tinca\ngoldfish\n\ngreat white shark, white shark\n")
    assert read_vocabulary(str(path)) == ["tench", "Tinca tinca", "goldfish", "great white shark", "white shark"]
    with pytest.raises(ClipflowError, match="missing.txt"):
        read_vocabulary(str(tmp_path / "missing.txt"))


def test_subset_file_is_sorted_u8_pairs_and_round_trips(tmp_path):
    uids = ["ffffffffffffffff0000000000000001", "0000000000000001FFFFFFFFFFFFFFFF", "00000000000000010000000000000000"]
    array = uid_array(pa.chunked_array([uids[:1], uids[1:]]))
    assert array.dtype == np.dtype("u8,u8") and array.tolist() == [(2**64 - 1, 1), (1, 2**64 - 1), (1, 0)]
    with SortedUidWriter(tmp_path / "subset.npy") as writer:
        writer.add(array)
    loaded = np.load(tmp_path / "subset.npy")
    assert loaded.dtype == array.dtype and loaded.tolist() == [(1, 0), (1, 2**64 - 1), (2**64 - 1, 1)]
    hex_back = [f"{hi:016x}{lo:016x}" for hi, lo in loaded.tolist()]
    assert sorted(hex_back) == hex_back and set(hex_back) == {uid.lower() for uid in uids}


@pytest.mark.parametrize("run_rows, merge_rows", [(1000, 1000), (97, 50), (7, 3), (5000, 1)])
def test_subset_file_merges_sorted_runs_into_one_order(tmp_path, run_rows, merge_rows):
    """Uids that arrive in any order, spilled as sorted runs and merged a block of each at a time, come out in
    DataComp's order: duplicates, shared high halves and runs of one value included."""
    rng = np.random.default_rng(run_rows)
    high = rng.choice(np.array([0, 1, 2**63, 2**64 - 1], "u8"), 3000)
    low = rng.integers(0, 2**64, 3000, dtype="u8")
    low[:500] = 7  # many equal uids
    pairs = np.empty(3000, "u8,u8")
    pairs["f0"], pairs["f1"] = high, low
    rng.shuffle(pairs)
    with SortedUidWriter(tmp_path / "uids.npy", run_rows=run_rows, merge_rows=merge_rows) as writer:
        for part in np.array_split(pairs, 13):
            writer.add(part)
    assert np.load(tmp_path / "uids.npy").tolist() == sorted(pairs.tolist())
    assert not (tmp_path / "uids.npy.runs").exists()
    with SortedUidWriter(tmp_path / "none.npy", run_rows=run_rows, merge_rows=merge_rows):
        pass
    assert np.load(tmp_path / "none.npy").dtype == np.dtype("u8,u8") and len(np.load(tmp_path / "none.npy")) == 0


def test_subset_file_refuses_uids_that_are_not_128_bit_hex():
    with pytest.raises(ClipflowError, match=r"'image-7' \(pool row 11\)"):
        uid_array(pa.array(["0" * 32, "image-7"]), first_row=10)
    with pytest.raises(ClipflowError, match=r"None \(pool row 0\)"):
        uid_array(pa.array([None, "0" * 32]))
    with pytest.raises(ClipflowError, match="pool row 1"):
        uid_array(pa.array(["0" * 32, "g" * 32]))
    with pytest.raises(ClipflowError, match=r"'7' \(pool row 0\)"):
        uid_array(pa.array([7]))
    assert uid_array(pa.array(["f" * 32], pa.large_string())).tolist() == [(2**64 - 1, 2**64 - 1)]


def test_subset_combines_filters_a_row_group_at_a_time(tmp_path):
    """Rows every filter keeps, what each removes alone, as the only one and in order, the removed rows with their
    first filter (held-out rows not among them), the score histogram, and examples read from the shards."""
    keys = plan_keys("00000000", 7)
    uids = [f"{i:032x}" for i in (5, 3, 9, 1, 0, 2, 8)]
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    pool = pa.table(
        {"uid": uids, "key": keys, "shard": ["00000000"] * 7, "caption": list("abcdefg"), "clip_score": scores}
    )
    pq.write_table(pool, tmp_path / "pool.parquet", row_group_size=3)
    decisions = {
        "held_out": [True, True, True, True, True, True, False],
        "a": [True, False, False, True, True, True, False],
        "b": [True, False, True, False, True, True, True],
    }
    tables = {}
    for name, keep in decisions.items():
        tables[name] = tmp_path / f"{name}.parquet"
        detail = [None if k else f"why {name}" for k in keep]
        pq.write_table(
            pa.table({"key": keys, "keep": keep, "detail": detail}, TABLE_SCHEMA), tables[name], row_group_size=3
        )
    out = {name: tmp_path / f"out.{name}" for name in ("uids", "kept", "removed")}
    result = write_subset(tmp_path / "pool.parquet", tables, out["uids"], out["kept"], out["removed"])
    assert (result["pool"], result["kept"], result["removed"]) == (7, 3, 4) and result["kept_by_group"] == [1, 2, 0]
    assert result["filters"]["a"] == {"removed_alone": 3, "removed_only_by_it": 1, "removed_in_order": 2}
    assert result["filters"]["b"] == {"removed_alone": 2, "removed_only_by_it": 1, "removed_in_order": 1}
    assert result["filters"]["held_out"]["removed_in_order"] == 1
    assert [f"{hi:016x}{lo:016x}" for hi, lo in np.load(out["uids"]).tolist()] == sorted([uids[0], uids[4], uids[5]])
    assert pq.read_table(out["kept"]).equals(pool.take([0, 4, 5]))
    removed = pq.read_table(out["removed"]).to_pylist()
    assert removed == [
        {"shard": "00000000", "key": keys[row], "filter": name} for row, name in ((1, "a"), (2, "a"), (3, "b"))
    ]
    histogram = result["score_histogram"]
    assert sum(histogram["kept"]) == 3 and sum(histogram["removed"]) == 4
    assert histogram["edges"][0] == 0.1 and histogram["edges"][-1] == 0.7

    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards/00000000.tar", [(key, jpeg(seed=i), "x") for i, key in enumerate(keys)])
    shown = examples(tmp_path / "pool.parquet", tables, result["kept_by_group"], ShardReader(tmp_path / "shards"), 2)
    assert [title for title, _, _ in shown] == [
        "kept (0.100)",
        "kept (0.600)",
        "removed: a (why a)",
        "removed: held_out (why held_out)",
    ]
    assert shown[0][1] == jpeg(seed=0) and [caption for _, _, caption in shown] == ["a", "f", "b", "g"]

    tables["b"] = tmp_path / "other.parquet"
    pq.write_table(
        pa.table({"key": keys[::-1], "keep": [True] * 7, "detail": [None] * 7}, TABLE_SCHEMA),
        tables["b"],
        row_group_size=3,
    )
    with pytest.raises(ClipflowError, match="filter b was computed on another pool"):
        write_subset(tmp_path / "pool.parquet", tables, out["uids"], out["kept"], out["removed"])
    pq.write_table(pa.table({"key": keys[:5], "keep": [True] * 5, "detail": [None] * 5}, TABLE_SCHEMA), tables["b"])
    with pytest.raises(ClipflowError, match="filter b was computed on another pool"):
        write_subset(tmp_path / "pool.parquet", tables, out["uids"], out["kept"], out["removed"])


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("rows", [500, 30_000])  # one cluster (exact), and 30 k-means clusters
def test_near_duplicates_are_dropped_and_distinct_rows_kept(rows):
    rng = np.random.default_rng(rows)
    centres = rng.standard_normal((20, 64))  # embeddings cluster; rows of one cluster sit at cosine ~0.5
    vectors = unit(centres[rng.integers(0, 20, rows)] + rng.standard_normal((rows, 64)))
    originals = rng.choice(rows // 2, 50, replace=False)
    copies = rows // 2 + rng.choice(rows // 2, 50, replace=False)
    vectors[copies] = unit(vectors[originals] + 0.02 * rng.standard_normal((50, 64)))  # cos ~0.99
    parts = np.array_split(vectors.astype(np.float16), 3)  # chunk boundaries must not matter
    duplicate_of = near_duplicates(parts, threshold=0.95)
    assert (duplicate_of[copies] == originals).all()
    assert (np.delete(duplicate_of, copies) == -1).all()


def test_near_duplicates_compare_with_kept_rows_only():
    """a ~ b and b ~ c but a !~ c: b goes (a kept), c stays, because its only close row was dropped."""
    a = np.array([1.0, 0.0])
    c = np.array([np.cos(0.5), np.sin(0.5)])
    b = unit((a + c)[None])[0]
    duplicate_of = near_duplicates([np.stack([a, b, c]).astype(np.float32)], threshold=np.cos(0.3))
    assert duplicate_of.tolist() == [-1, 0, -1]


def write_shards(folder, shards: int, per_shard: int) -> pd.DataFrame:
    """Input shards as the download step leaves them; returns their rows (shard, key, uid, caption)."""
    folder.mkdir()
    rows = []
    for shard in range(shards):
        samples = [
            (f"{shard:08d}{i:04d}", jpeg((40, 30), seed=shard * 100 + i), f"sample {shard}-{i}")
            for i in range(per_shard)
        ]
        write_shard(folder / f"{shard:08d}.tar", samples)
        rows += [
            {"shard": f"{shard:08d}", "key": key, "uid": f"u{key}", "caption": caption} for key, _, caption in samples
        ]
    return pd.DataFrame(rows)


def read_shards(folder) -> list[dict]:
    tars = sorted(str(p) for p in folder.glob("*.tar"))
    return list(wds.WebDataset(tars, shardshuffle=False).decode("rgb8"))


def write_kept(path, rows: pd.DataFrame):
    """A subset's kept.parquet: pool rows in pool order, in row groups of 4."""
    rows.assign(url="http://x/")[["uid", "key", "shard", "url", "caption"]].to_parquet(path, row_group_size=4)
    return path


def test_reshard_writes_exactly_the_subset_and_resumes(tmp_path):
    rows = write_shards(tmp_path / "in", shards=3, per_shard=10)
    gone = pd.DataFrame([{"shard": "00000001", "key": "000000019999", "uid": "u-gone", "caption": "not downloaded"}])
    kept = write_kept(tmp_path / "kept.parquet", pd.concat([rows.iloc[::2], gone]).sort_values(["shard", "key"]))
    out = tmp_path / "out"
    record = reshard(kept, tmp_path / "in", out, samples_per_shard=4, processes=2)
    assert record["shards"] == ["00000000", "00000001", "00000002", "00000003"] and record["written_now"] == 4
    assert (record["samples"], record["kept_not_downloaded"]) == (15, 1)

    samples = read_shards(out)
    expected = rows.iloc[::2]
    assert [s["__key__"] for s in samples] == list(expected["key"])
    assert [s["json"]["uid"] for s in samples] == list(expected["uid"])
    assert all(s["txt"] == s["json"]["caption"] and s["jpg"].shape == (30, 40, 3) for s in samples)
    stats = [json.loads((out / f"{n:08d}_stats.json").read_text()) for n in range(4)]
    assert [s["successes"] for s in stats] == [4, 4, 4, 3]
    assert pd.read_parquet(out / "00000003.parquet")["key"].tolist() == list(expected["key"])[12:]

    assert reshard(kept, tmp_path / "in", out, 4, 2)["written_now"] == 0  # complete: nothing to do
    (out / "00000001_stats.json").unlink()  # as if interrupted while writing shard 1
    before = (out / "00000002.tar").stat().st_mtime_ns
    assert reshard(kept, tmp_path / "in", out, 4, 2)["written_now"] == 1
    assert (out / "00000002.tar").stat().st_mtime_ns == before
    source = tmp_path / "in/00000002.tar"
    os.utime(source, ns=(1, 1))  # a copy of other mtime (as one fetched from object storage): the same bytes
    assert reshard(kept, tmp_path / "in", out, 4, 2)["written_now"] == 0
    write_shard(source, [(f"00000002{i:04d}", jpeg((40, 30), seed=999 + i), "again") for i in range(10)])
    assert reshard(kept, tmp_path / "in", out, 4, 2)["written_now"] == 2  # downloaded again: the shards it feeds
    assert [s["txt"] for s in read_shards(out)][-5:] == ["again"] * 5

    smaller = write_kept(tmp_path / "smaller.parquet", expected.iloc[:6])  # changed shards rewritten, extra removed
    assert reshard(smaller, tmp_path / "in", out, 4, 2)["shards"] == ["00000000", "00000001"]
    assert [s["__key__"] for s in read_shards(out)] == list(expected["key"][:6])
    empty = write_kept(tmp_path / "empty.parquet", expected.iloc[:0])
    assert reshard(empty, tmp_path / "in", out, 4, 2) == {
        "samples": 0,
        "samples_per_shard": 4,
        "shards": [],
        "written_now": 0,
        "kept_not_downloaded": 0,
    }
    assert not list(out.glob("*.tar"))

    shuffled = write_kept(tmp_path / "shuffled.parquet", expected.sample(frac=1, random_state=0))
    with pytest.raises(ClipflowError, match="shuffled.parquet is not in pool order"):
        reshard(shuffled, tmp_path / "in", out, 4, 2)


def test_reshard_names_a_sample_missing_from_its_shard(tmp_path):
    rows = write_shards(tmp_path / "in", shards=1, per_shard=3)
    results = pd.read_parquet(tmp_path / "in/00000000.parquet")
    results.loc[1, "key"] = rows.loc[1, "key"] = "000000009999"  # a success that the tar lacks
    results.to_parquet(tmp_path / "in/00000000.parquet")
    kept = write_kept(tmp_path / "kept.parquet", rows.sort_values("key"))
    with pytest.raises(ClipflowError, match="sample 000000009999 is missing from shard 00000000.tar"):
        reshard(kept, tmp_path / "in", tmp_path / "out", samples_per_shard=10, processes=1)


# (path on the test server, caption, kept by basic, kept by text_based, near-duplicate of row)
WORKFLOW_ROWS = [
    ("/sized/320x240/1.jpg", "a red fox standing in the snow", True, True, None),
    ("/sized/150x300/2.jpg", "a small picture of a sleeping cat", False, False, None),
    ("/sized/700x200/3.jpg", "a very wide panorama of the mountains", False, False, None),
    ("/sized/320x240/4.jpg", "two words", False, False, None),
    ("/sized/320x240/5.jpg", "ein kleiner Hund spielt im Garten mit einem roten Ball", False, False, None),
    ("/sized/320x240/1.jpg?copy", "the same fox photo posted again elsewhere", True, True, 0),
    ("/sized/400x300/6.jpg", "a Golden Retriever puppy playing on the grass", True, True, None),
    ("/sized/300x300/7.jpg", "a bowl of fruit on a wooden kitchen table", True, False, None),
    ("/sized/300x300/7.jpg?again", "a bowl of fruit, the same picture once more", True, False, 7),
    ("/missing.jpg", "an image that is gone", None, None, None),
]


@pytest.fixture(scope="module")
def curated(tmp_path_factory, image_server):
    workdir = tmp_path_factory.mktemp("curation")
    write_score_heads(workdir)
    lines = ["url,caption"] + [f'{image_server}{p},"{c}"' for p, c, *_ in WORKFLOW_ROWS]
    (workdir / "metadata.csv").write_text("\n".join(lines) + "\n")
    config = {
        "input": {"paths": ["metadata.csv"]},
        "plan": {"samples_per_shard": 4},
        "download": {"timeout": 2, "threads": 4, "image_size": 64, "shards_per_job": 1},
        "embed": {"model": "ViT-S-32", "pretrained": "none", "batch_size": 4, "workers": 1, "shards_per_job": 1},
        "curate": {
            "filters": {
                "clip_top_half": {"kind": "clip_score", "top_fraction": 0.5},
                "basic": {"kind": "basic"},
                "dogs_and_foxes": {"kind": "text_based", "vocabulary": ["fox", "golden retriever"]},
                "near_duplicates": {"kind": "semantic_dedup", "threshold": 0.999},
                "pretty": {"kind": "aesthetic", "min_score": 4.7},
                "safe": {"kind": "unsafe"},
            },
            "scores": {"aesthetic_model": "aesthetic.pth", "safety_model": "nsfw.pth"},
            "subsets": {
                "basic_dedup": {"filters": ["basic", "near_duplicates"], "reshard": True},
                "pretty_safe": {"filters": ["pretty", "safe"]},
                "all": {"filters": ["clip_top_half", "basic", "dogs_and_foxes", "near_duplicates"]},
            },
            "reshard": {"samples_per_shard": 2, "processes": 2},
        },
    }
    write_config(workdir, config)
    run_snakemake(workdir, "--cores", "2")
    return workdir


def score_head_modules():
    """An aesthetic predictor (one linear layer, as LAION's first) and an NSFW detector in clip-retrieval's
    layout, with random weights, for ViT-S-32's 384-d embeddings; scaled so that both filters keep some rows."""
    torch.manual_seed(0)
    aesthetic = torch.nn.Linear(384, 1)
    with torch.no_grad():
        aesthetic.weight.mul_(40)
        aesthetic.bias.fill_(5)
    detector = torch.nn.Module()
    detector.layers = torch.nn.Sequential(
        torch.nn.Linear(384, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 8), torch.nn.ReLU(),
        torch.nn.Dropout(0.2), torch.nn.Linear(8, 4), torch.nn.Linear(4, 1),
    )  # fmt: skip
    return aesthetic.eval(), detector.eval()


def write_score_heads(workdir) -> None:
    aesthetic, detector = score_head_modules()
    torch.save(aesthetic.state_dict(), workdir / "aesthetic.pth")
    torch.save(detector.state_dict(), workdir / "nsfw.pth")


def pool_rows(workdir) -> pd.DataFrame:
    """The pool with each row's position in WORKFLOW_ROWS."""
    pool = pd.read_parquet(workdir / "results/curate/pool.parquet")
    position = {path: i for i, (path, *_) in enumerate(WORKFLOW_ROWS)}
    pool["row"] = [position[url.split("/", 3)[3].join(["/", ""])] for url in pool["url"]]
    return pool


def test_workflow_filters_give_the_known_answers(curated):
    pool = pool_rows(curated)
    assert sorted(pool["row"]) == list(range(9))  # the missing image never reaches the pool
    filters = {
        name: pd.read_parquet(curated / f"results/curate/filters/{name}.parquet")
        for name in ("basic", "dogs_and_foxes", "near_duplicates", "clip_top_half")
    }
    expected = [WORKFLOW_ROWS[r] for r in pool["row"]]
    assert filters["basic"]["keep"].tolist() == [e[2] for e in expected]
    assert filters["dogs_and_foxes"]["keep"].tolist() == [e[3] for e in expected]
    # a removed copy's detail: the pool row (index id) of the copy kept
    duplicate_rows = [pool["row"][int(n)] if n else None for n in filters["near_duplicates"]["detail"]]
    assert duplicate_rows == [e[4] for e in expected]

    image = np.concatenate([np.load(p) for p in sorted((curated / "results/embeddings/image").glob("*.npy"))])
    text = np.concatenate([np.load(p) for p in sorted((curated / "results/embeddings/text").glob("*.npy"))])
    scores = (image.astype(np.float32) * text.astype(np.float32)).sum(axis=1)
    assert np.allclose(pool["clip_score"], scores, atol=1e-5)
    assert filters["clip_top_half"]["keep"].sum() == 5
    assert (
        pool["clip_score"][filters["clip_top_half"]["keep"]].min()
        >= pool["clip_score"][~filters["clip_top_half"]["keep"]].max()
    )


def test_workflow_scores_aesthetics_and_safety(curated):
    """The pool's aesthetic_score and punsafe are the heads' outputs (computed here by torch), the two filters
    cut at them, and the rating embeddings are the mean image embedding of each rating's images."""
    pool = pool_rows(curated)
    image = np.concatenate([np.load(p) for p in sorted((curated / "results/embeddings/image").glob("*.npy"))])
    aesthetic, detector = score_head_modules()
    with torch.no_grad():
        normalized = torch.nn.functional.normalize(torch.from_numpy(image.astype(np.float32)), dim=1)
        aesthetic_scores = aesthetic(normalized)[:, 0].numpy()
        punsafe = detector.layers(normalized)[:, 0].numpy().clip(0, 1)
    assert np.allclose(pool["aesthetic_score"], aesthetic_scores, atol=1e-4)
    assert np.allclose(pool["punsafe"], punsafe, atol=1e-5)
    pretty = pd.read_parquet(curated / "results/curate/filters/pretty.parquet")["keep"].to_numpy()
    safe = pd.read_parquet(curated / "results/curate/filters/safe.parquet")["keep"].to_numpy()
    assert np.array_equal(pretty, aesthetic_scores >= 4.7) and 0 < pretty.sum() < len(pool)
    assert np.array_equal(safe, punsafe <= 0.5)
    kept = pd.read_parquet(curated / "results/curate/subsets/pretty_safe/kept.parquet")
    assert sorted(kept["uid"]) == sorted(pool["uid"][pretty & safe])

    ratings = np.clip(np.rint(aesthetic_scores), 0, 9)
    folder = curated / "results/curate/aesthetic_embeddings"
    for rating in np.unique(ratings).astype(int):
        mean = image[ratings == rating].astype(np.float64).mean(axis=0)
        assert np.allclose(np.load(folder / f"rating{rating}.npy"), mean / np.linalg.norm(mean), atol=1e-3)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"rating{k}.npy" for k in range(10))


def test_filter_of_a_score_no_head_computes_is_refused(tmp_path):
    config = {
        "input": {"paths": ["metadata.csv"]},
        "curate": {
            "filters": {"pretty": {"kind": "aesthetic", "min_score": 5}},
            "subsets": {"s": {"filters": ["pretty"]}},
        },
    }
    with pytest.raises(ClipflowError, match=r"curate.filters.pretty \(aesthetic\).*set curate.scores.aesthetic_model"):
        validate_config(config)


def test_workflow_subset_file_kept_rows_and_summary(curated):
    pool = pool_rows(curated)
    folder = curated / "results/curate/subsets/basic_dedup"
    expected_rows = {0, 6, 7}  # basic keeps 0 5 6 7 8; 5 and 8 are copies of 0 and 7
    expected_uids = sorted(pool["uid"][pool["row"].isin(expected_rows)])
    subset = np.load(folder / "uids.npy")
    assert subset.dtype == np.dtype("u8,u8")
    assert [f"{hi:016x}{lo:016x}" for hi, lo in subset.tolist()] == expected_uids
    assert sorted(pd.read_parquet(folder / "kept.parquet")["uid"]) == expected_uids
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["pool"], summary["kept"]) == (9, 3)
    assert summary["filters"]["basic"]["removed_alone"] == 4
    assert summary["filters"]["near_duplicates"] == {"removed_alone": 2, "removed_only_by_it": 2, "removed_in_order": 2}
    assert (folder / "examples.png").stat().st_size > 0 and (folder / "clip_score_cut.png").stat().st_size > 0


def test_workflow_reshards_the_subset_and_reruns_as_a_no_op(curated):
    pool = pool_rows(curated)
    folder = curated / "results/curate/subsets/basic_dedup/shards"
    samples = read_shards(folder)
    assert sorted(s["json"]["uid"] for s in samples) == sorted(pool["uid"][pool["row"].isin({0, 6, 7})])
    assert sorted(p.name for p in folder.glob("*_stats.json")) == ["00000000_stats.json", "00000001_stats.json"]
    assert not (curated / "results/curate/subsets/all/shards").exists()  # reshard: false
    result = run_snakemake(curated, "--cores", "2")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_workflow_report_shows_the_curation(curated):
    run_snakemake(curated, "--report", "report.html")
    html = (curated / "report.html").read_text()
    assert "Curation" in html and "basic_dedup" in html


def test_new_head_weights_rescore_the_pool(curated):
    """Last in this module: it leaves the run with other weights. They are inputs of the pool (touching the file
    alone reruns nothing: Snakemake compares the checksum it recorded)."""
    os.utime(curated / "aesthetic.pth")
    assert "Nothing to be done" in run_snakemake(curated, "--dry-run").stdout
    head = torch.nn.Linear(384, 1)
    torch.save(head.state_dict(), curated / "aesthetic.pth")
    result = run_snakemake(curated, "--dry-run")
    jobs = result.stdout + result.stderr
    assert "curate_pool" in jobs and "aesthetic_embeddings" in jobs and "curate_filter" in jobs
    assert "embed_chunk" not in jobs and "download_batch" not in jobs


def test_any_numeric_pool_column_can_be_the_score(tmp_path):
    pool = pd.DataFrame(
        {
            "uid": list("abcdefg"),
            "clip_score": [0.9, 0.1, 0.2, 0.3, 0.5, 0.5, 0.5],
            "similarity": [0.1, 0.3, 0.29, 0.27, 0.5, 0.1, 0.6],
        }
    )
    by_column = clip_score(threshold=0.28, score_column="similarity")
    assert filter_pool(tmp_path, pool, by_column)[0]["keep"].tolist() == [False, True, True, False, True, False, True]
    for column, message in (("nope", r"no column 'nope'"), ("uid", r"column 'uid' holds object, not numbers")):
        with pytest.raises(ClipflowError, match=message):
            filter_pool(tmp_path, pool, clip_score(threshold=0.2, score_column=column))
    pool.loc[5, "similarity"] = None  # in the second row group: named by its row in the pool
    with pytest.raises(ClipflowError, match=r"'similarity' has no value in pool row 5 \(uid f\)"):
        filter_pool(tmp_path, pool, by_column)
    with pytest.raises(ClipflowError, match=r"'similarity' has no value in pool row 5$"):  # its passes read no uid
        filter_pool(tmp_path, pool, clip_score(top_fraction=0.5, score_column="similarity"))
