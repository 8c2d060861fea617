import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import clipflow.ingest.planner
import clipflow.ingest.reader
from clipflow.errors import ClipflowError
from clipflow.ingest.dedup import _first_occurrences
from clipflow.ingest.planner import load_plan, make_plan
from clipflow.ingest.urls import url_problems


def config(paths, samples_per_shard=1000, **input_overrides):
    input_config = {"paths": paths, "format": "auto", "url_col": "url", "caption_col": "caption", "uid_col": None}
    input_config.update({"keep_cols": [], "metadata_cols": [], "verbatim": False, **input_overrides})
    return {"input": input_config, "plan": {"samples_per_shard": samples_per_shard}}


def random_metadata(rng, rows, distinct):
    """Rows drawn from `distinct` (url, caption) pairs, so many repeat; some urls share a caption-less twin."""
    picks = rng.integers(0, distinct, rows)
    return pd.DataFrame({"url": [f"http://h/{p // 2}.jpg" for p in picks], "caption": [f"c{p % 2}" for p in picks]})


def planned_rows(plan):
    return pd.concat([pd.read_parquet(plan.shard_path(s)) for s in plan.shards], ignore_index=True)


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(clipflow.ingest.reader, "BATCH_ROWS", 997)  # many batches, none aligned with shards


def test_dedup_keeps_first_occurrences_across_files_like_pandas(tmp_path, small_batches):
    rng = np.random.default_rng(0)
    frames = [random_metadata(rng, 12_000, 9_000) for _ in range(3)]
    paths = []
    for i, frame in enumerate(frames):
        frame.to_parquet(tmp_path / f"part-{i}.parquet")
        paths.append(str(tmp_path / f"part-{i}.parquet"))
    plan = make_plan(config(paths, samples_per_shard=2_500), tmp_path / "plan")

    everything = pd.concat(frames, ignore_index=True)
    expected = everything.drop_duplicates(["url", "caption"], keep="first")
    rows = planned_rows(plan)
    assert rows["url"].tolist() == expected["url"].tolist()
    assert rows["caption"].tolist() == expected["caption"].tolist()
    assert plan.totals() == {
        "rows": 36_000,
        "duplicates": 36_000 - len(expected),
        "invalid": 0,
        "planned": len(expected),
    }
    sizes = [s["rows"] for s in plan.state["shards"]]
    assert sizes[:-1] == [2_500] * (len(sizes) - 1) and 0 < sizes[-1] <= 2_500
    assert plan.shards == [f"{i:08d}" for i in range(len(sizes))]
    dropped = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "plan/dropped").glob("*.parquet"))])
    assert len(dropped) == 36_000 - len(expected) and set(dropped["state"]) == {"duplicate"}
    # every input row is in exactly one place: a shard or the dropped list
    traced = pd.concat([rows[["source", "source_row"]], dropped[["source", "source_row"]]])
    assert len(traced.drop_duplicates()) == 36_000


def test_worker_processes_plan_exactly_what_one_process_plans(tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(3)
    paths = []
    for i, rows in enumerate([2_000, 150, 3_100, 0, 900]):  # groups of different sizes, one empty file
        frame = random_metadata(rng, rows, 8_000)
        frame.loc[frame.index % 97 == 5, "url"] = "ftp://h/x.jpg"  # some invalid rows in every file
        path = tmp_path / f"part-{i}.{'csv' if i % 2 else 'parquet'}"
        frame.to_csv(path, index=False) if i % 2 else frame.to_parquet(path)
        paths.append(str(path))
    monkeypatch.setattr(clipflow.ingest.planner, "POOL_BYTES", 0)  # so that this small input is worth workers
    plans = {}
    for processes in (1, 3):
        cfg = config(paths, samples_per_shard=250)
        cfg["plan"]["processes"] = processes
        with caplog.at_level("INFO", logger="clipflow.ingest.planner"):
            plans[processes] = make_plan(cfg, tmp_path / f"plan-{processes}")
    assert "in 3 worker processes" in caplog.text  # shards cut across groups of files, and joined again

    one, three = plans[1], plans[3]
    assert one.state == three.state and len(one.shards) > 10
    for shard in one.shards:
        assert pd.read_parquet(one.shard_path(shard)).equals(pd.read_parquet(three.shard_path(shard)))
    for name in [f"{i:05d}.parquet" for i in range(len(paths))]:
        dropped = [pd.read_parquet(plan.folder / "dropped" / name) for plan in (one, three)]
        assert dropped[0].equals(dropped[1])
    assert one.totals()["invalid"] > 0 and one.totals()["duplicates"] > 0


def test_plan_of_an_earlier_version_is_refused(tmp_path):
    pd.DataFrame({"url": ["http://h/1.jpg"], "caption": ["a"]}).to_csv(tmp_path / "a.csv", index=False)
    cfg = config([str(tmp_path / "a.csv")])
    plan = make_plan(cfg, tmp_path / "plan")
    plan.state["settings"]["version"] = 1
    (tmp_path / "plan/state.json").write_text(json.dumps(plan.state))
    with pytest.raises(ClipflowError, match="plan version 1.*blake2b.*delete .*plan to plan again"):
        make_plan(cfg, tmp_path / "plan")


def test_rows_without_url_are_dropped_as_invalid(tmp_path):
    pd.DataFrame({"url": ["http://h/1.jpg", "", "  ", None], "caption": ["a", "b", "c", "d"]}).to_parquet(
        tmp_path / "m.parquet"
    )
    plan = make_plan(config([str(tmp_path / "m.parquet")]), tmp_path / "plan")
    assert plan.totals() == {"rows": 4, "duplicates": 0, "invalid": 3, "planned": 1}
    dropped = pd.read_parquet(tmp_path / "plan/dropped/00000.parquet")
    assert dropped["source_row"].tolist() == [1, 2, 3] and set(dropped["reason"]) == {"empty url"}


def test_urls_that_are_not_fetched_are_invalid_with_their_reason(tmp_path):
    urls = [
        "file:///etc/hostname",
        "ftp://h/1.jpg",
        "h/2.jpg",
        "http:///3.jpg",
        "data:image/gif;base64,R0",
        "HTTPS://h/4",
    ]
    pd.DataFrame({"url": urls, "caption": list("abcdef")}).to_parquet(tmp_path / "m.parquet")
    plan = make_plan(config([str(tmp_path / "m.parquet")]), tmp_path / "plan")
    assert planned_rows(plan)["url"].tolist() == urls[4:]
    dropped = pd.read_parquet(tmp_path / "plan/dropped/00000.parquet")
    assert dropped["reason"].str.split(":").str[0].tolist() == [
        "unsupported URL scheme 'file'",
        "unsupported URL scheme 'ftp'",
        "no URL scheme",
        "no host in the URL",
    ]


def test_url_check_at_the_edges_of_its_fast_path():
    urls = [
        "http://",
        "https://",
        "https:///x",
        "http://a",
        "https://9",
        "https://\u00e9.example/x",
        "HTTP://a",
        "http:/a",
    ]
    problems = url_problems(pa.array(urls))
    assert problems == {
        0: "no host in the URL",
        1: "no host in the URL",
        2: "no host in the URL",
        7: "no host in the URL",
    }
    assert url_problems(pa.array(urls).slice(3, 3)) == {}  # a slice: offsets start inside the buffer


def test_first_occurrences_are_numpys_unique_also_when_keys_share_their_first_half():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 256, (20_000, 16), dtype=np.uint8)
    keys[rng.integers(0, 20_000, 5_000)] = keys[rng.integers(0, 20_000, 5_000)]  # repeats
    for shared in (False, True):
        if shared:
            keys[::3, :8] = 7  # a third of the keys differ only in their last 8 bytes
        as_keys = keys.view("S16").ravel()
        distinct, first = _first_occurrences(as_keys)
        expected, expected_first = np.unique(as_keys, return_index=True)
        assert distinct.tolist() == expected.tolist() and first.tolist() == expected_first.tolist()


def test_captions_differing_after_a_nul_stay_two_rows(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"url,caption\nhttp://h/1.jpg,red car\x00 parked\nhttp://h/1.jpg,red car\x00 moving\n")
    plan = make_plan(config([str(path)]), tmp_path / "plan")
    assert plan.totals()["duplicates"] == 0
    assert planned_rows(plan)["caption"].tolist() == ["red car  parked", "red car  moving"]


def test_new_files_append_shards_and_never_renumber(tmp_path):
    rng = np.random.default_rng(1)
    first, second = random_metadata(rng, 3_000, 2_000), random_metadata(rng, 3_000, 2_000)
    first.to_csv(tmp_path / "a.csv", index=False)
    cfg = config([str(tmp_path / "*.csv")], samples_per_shard=700)
    plan = make_plan(cfg, tmp_path / "plan")
    old_shards = {s: plan.shard_path(s).read_bytes() for s in plan.shards}
    old_mtimes = {s: plan.shard_path(s).stat().st_mtime_ns for s in plan.shards}

    again = make_plan(cfg, tmp_path / "plan")  # nothing new: a no-op
    assert again.state == plan.state
    assert {s: again.shard_path(s).stat().st_mtime_ns for s in again.shards} == old_mtimes

    second.to_csv(tmp_path / "b.csv", index=False)
    grown = make_plan(cfg, tmp_path / "plan")
    assert grown.shards[: len(old_shards)] == list(old_shards)
    assert {s: grown.shard_path(s).read_bytes() for s in old_shards} == old_shards
    assert {s: grown.shard_path(s).stat().st_mtime_ns for s in old_shards} == old_mtimes
    # The grown plan holds exactly what planning both files at once would, in the same order.
    fresh = make_plan(cfg, tmp_path / "fresh")
    assert planned_rows(grown)[["url", "caption"]].equals(planned_rows(fresh)[["url", "caption"]])
    assert grown.totals() == fresh.totals()


def test_changed_planned_file_is_refused(tmp_path):
    pd.DataFrame({"url": ["http://h/1.jpg"], "caption": ["a"]}).to_csv(tmp_path / "a.csv", index=False)
    cfg = config([str(tmp_path / "a.csv")])
    make_plan(cfg, tmp_path / "plan")
    pd.DataFrame({"url": ["http://h/2.jpg"], "caption": ["b"]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ClipflowError, match=r"a\.csv: changed since it was planned"):
        make_plan(cfg, tmp_path / "plan")


def test_changed_settings_are_refused(tmp_path):
    pd.DataFrame({"url": ["http://h/1.jpg"], "caption": ["a"]}).to_csv(tmp_path / "a.csv", index=False)
    make_plan(config([str(tmp_path / "a.csv")]), tmp_path / "plan")
    with pytest.raises(ClipflowError, match="delete .*plan to plan again"):
        make_plan(config([str(tmp_path / "a.csv")], samples_per_shard=5), tmp_path / "plan")


def test_empty_input_is_an_error(tmp_path):
    (tmp_path / "empty.csv").write_text("url,caption\n")
    with pytest.raises(ClipflowError, match="hold no rows"):
        make_plan(config([str(tmp_path / "empty.csv")]), tmp_path / "plan")
    assert not (tmp_path / "plan/state.json").exists()


def test_interrupted_plan_leaves_the_previous_plan_whole(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    random_metadata(rng, 2_000, 1_500).to_csv(tmp_path / "a.csv", index=False)
    cfg = config([str(tmp_path / "*.csv")], samples_per_shard=300)
    before = make_plan(cfg, tmp_path / "plan").state
    random_metadata(rng, 2_000, 1_500).to_csv(tmp_path / "b.csv", index=False)

    real_deduplicate = clipflow.ingest.planner.deduplicate

    def crash_after_dedup(*args):
        real_deduplicate(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(clipflow.ingest.planner, "deduplicate", crash_after_dedup)
    with pytest.raises(KeyboardInterrupt):
        make_plan(cfg, tmp_path / "plan")
    assert load_plan(tmp_path / "plan").state == before
    monkeypatch.setattr(clipflow.ingest.planner, "deduplicate", real_deduplicate)
    resumed = make_plan(cfg, tmp_path / "plan")
    fresh = make_plan(cfg, tmp_path / "fresh")
    assert resumed.totals() == fresh.totals()
    assert planned_rows(resumed)["uid"].tolist() == planned_rows(fresh)["uid"].tolist()
    left = sorted(p.name for p in (tmp_path / "plan").iterdir())
    assert left == [".lock", "dropped", "keys-2", "shards", "state.json"]


def test_state_records_sources_with_counts(tmp_path):
    pd.DataFrame({"url": ["http://h/1.jpg", "http://h/1.jpg"], "caption": ["a", "a"]}).to_csv(
        tmp_path / "a.csv", index=False
    )
    make_plan(config([str(tmp_path / "a.csv")]), tmp_path / "plan")
    (source,) = json.loads((tmp_path / "plan/state.json").read_text())["sources"]
    assert (source["rows"], source["duplicates"], source["planned"], source["format"]) == (2, 1, 1, "csv")


def test_copied_or_touched_file_with_same_bytes_is_accepted(tmp_path):
    import os

    pd.DataFrame({"url": ["http://h/1.jpg"], "caption": ["a"]}).to_csv(tmp_path / "a.csv", index=False)
    cfg = config([str(tmp_path / "a.csv")])
    before = make_plan(cfg, tmp_path / "plan").shards
    os.utime(tmp_path / "a.csv", (1, 1))
    assert make_plan(cfg, tmp_path / "plan").shards == before


def test_a_verbatim_plan_keeps_every_row_as_given(tmp_path):
    """input.verbatim (the DataComp presets): duplicates, URLs that are not fetched and control characters stay."""
    path = tmp_path / "m.parquet"
    rows = pd.DataFrame(
        {
            "url": ["http://h/1.jpg", "http://h/1.jpg", "ftp://h/2.jpg", "", "h/3.jpg"],
            "caption": ["red car\x00 parked", "red car\x00 parked", "a\x85b", "x\x1fy", "c"],
            "uid": ["a" * 32, "b" * 32, "c" * 32, "d" * 32, "e" * 32],
        }
    )
    rows.to_parquet(path)
    plan = make_plan(config([str(path)], uid_col="uid", verbatim=True), tmp_path / "plan")
    assert plan.totals() == {"rows": 5, "duplicates": 0, "invalid": 0, "planned": 5}
    planned = planned_rows(plan)
    assert planned[["url", "caption", "uid"]].equals(rows)
    default = make_plan(config([str(path)], uid_col="uid"), tmp_path / "default")
    assert default.totals() == {"rows": 5, "duplicates": 1, "invalid": 3, "planned": 1}
    assert "verbatim" not in default.state["settings"]  # plans made before the setting existed stay valid


def test_an_input_without_a_fetchable_url_is_refused_before_any_job(tmp_path):
    pd.DataFrame({"url": [None, None, "ftp://h/1.jpg", ""], "caption": ["a", "b", "c", "d"]}).to_parquet(
        tmp_path / "nulls.parquet"
    )
    message = r"none of the 4 rows of .*nulls\.parquet.* can be downloaded: 4 have no URL .* in column 'url'"
    with pytest.raises(ClipflowError, match=message):
        make_plan(config([str(tmp_path / "nulls.parquet")]), tmp_path / "plan")
    assert not (tmp_path / "plan/state.json").exists()


UID_ROWS = [  # (uid, url): the second column of the story is what the plan must do with each row
    ("u1", "http://h/a.jpg"),  # planned
    ("u1", "http://h/b.jpg"),  # the uid of row 0 again: dropped, naming row 0
    ("u2", "http://h/a.jpg"),  # the (url, caption) of row 0 again: dropped as that, and u2 stays free
    ("u2", "http://h/c.jpg"),  # planned: the first planned row of u2
    ("u3", "ftp://h/d.jpg"),  # invalid: claims no uid
    ("u3", "http://h/e.jpg"),  # planned
    ("U1", "http://h/f.jpg"),  # planned: uids are compared exactly
]


@pytest.mark.parametrize("processes", [1, 3])
def test_a_uid_given_twice_is_planned_once_and_the_repeat_names_its_first_row(tmp_path, monkeypatch, processes):
    monkeypatch.setattr(clipflow.ingest.planner, "POOL_BYTES", 0)
    rows = pd.DataFrame(UID_ROWS, columns=["uid", "url"]).assign(caption="same caption")
    rows.to_csv(tmp_path / "a.csv", index=False)
    cfg = config([str(tmp_path / "*.csv")], uid_col="uid")
    cfg["plan"]["processes"] = processes
    plan = make_plan(cfg, tmp_path / "plan")
    assert planned_rows(plan)[["uid", "url"]].values.tolist() == [list(UID_ROWS[i]) for i in (0, 3, 5, 6)]
    assert plan.totals() == {"rows": 7, "duplicates": 2, "invalid": 1, "planned": 4}
    dropped = pd.read_parquet(tmp_path / "plan/dropped/00000.parquet").set_index("source_row")
    assert dropped.loc[1, ["state", "reason"]].tolist() == [
        "duplicate", f"repeats the uid of row 0 of {tmp_path / 'a.csv'} (input.uid_col)"
    ]
    assert dropped.loc[2, "reason"] == "repeats an earlier (url, caption)"
    assert dropped.loc[4, "state"] == "invalid"

    # a later file's row repeating a planned uid, and a uid only a dropped row held before
    pd.DataFrame({"uid": ["u2", "u4"], "url": ["http://h/g.jpg", "http://h/h.jpg"], "caption": "x"}).to_csv(
        tmp_path / "b.csv", index=False
    )
    plan = make_plan(cfg, tmp_path / "plan")
    assert planned_rows(plan)["uid"].tolist() == ["u1", "u2", "u3", "U1", "u4"]
    later = pd.read_parquet(tmp_path / "plan/dropped/00001.parquet")
    assert later[["source_row", "state", "reason"]].values.tolist() == [
        [0, "duplicate", "repeats the uid of a row planned before (input.uid_col)"]
    ]
    left = sorted(p.name for p in (tmp_path / "plan").iterdir())
    assert left == [".lock", "dropped", "keys-2", "shards", "state.json", "uids-2"]


def test_a_verbatim_pool_that_repeats_a_uid_is_refused_naming_both_rows(tmp_path):
    pd.DataFrame({"uid": ["a" * 32, "b" * 32, "a" * 32], "url": "http://h/1.jpg", "caption": "c"}).to_parquet(
        tmp_path / "pool.parquet"
    )
    message = (
        rf"pool\.parquet: row 2 repeats the uid '{'a' * 32}' of row 0 of .*pool\.parquet \(column 'uid'\); 1 rows in"
        r" all repeat"
    )
    with pytest.raises(ClipflowError, match=message):
        make_plan(config([str(tmp_path / "pool.parquet")], uid_col="uid", verbatim=True), tmp_path / "plan")
    assert sorted(p.name for p in (tmp_path / "plan").iterdir()) in ([".lock"], [".lock", "dropped", "shards"])


def test_a_second_planner_is_refused_while_one_is_planning_and_the_plan_stays_whole(tmp_path):
    import subprocess
    import sys

    pd.DataFrame({"url": ["http://h/1.jpg"], "caption": ["a"]}).to_csv(tmp_path / "a.csv", index=False)
    cfg = config([str(tmp_path / "*.csv")])
    before = make_plan(cfg, tmp_path / "plan").state
    pd.DataFrame({"url": ["http://h/2.jpg"], "caption": ["b"]}).to_csv(tmp_path / "b.csv", index=False)
    holder = subprocess.Popen(  # what a planning process holds
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX);"
         " f.truncate(0); f.write('pid 4242 on node7'); f.flush(); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "plan/.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ClipflowError, match=r"plan: another clipflow process \(pid 4242 on node7\) is making"):
            make_plan(cfg, tmp_path / "plan")
        assert load_plan(tmp_path / "plan").state == before
    finally:
        holder.kill()
        holder.wait()
    assert make_plan(cfg, tmp_path / "plan").totals()["planned"] == 2
