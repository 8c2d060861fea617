"""The cache that jobs read bulk files through (clipflow.bulk.Cache), on a moto S3 server: local copies of the
recorded size are read in place, the rest fetched on first use into a folder of the job's own under $TMPDIR that
holds at most its budget (or the last RECENT_COPIES files), checked against the recorded sizes, removed at the end."""

import json
import pickle
import tempfile
from pathlib import Path

import pytest

from clipflow.bulk import RECENT_COPIES, job_cache
from clipflow.errors import ClipflowError
from conftest import moto_s3

BUCKET = "clipflow-cache"
URL = f"s3://{BUCKET}/run/embeddings"
NAMES = [f"{kind}/{shard:08d}.npy" for shard in range(4) for kind in ("image", "text")]  # names repeat across kinds
SIZE = 1000


@pytest.fixture()
def stored(tmp_path, monkeypatch):
    """A chunk record listing NAMES (SIZE bytes each, each its own bytes) kept at URL, no local copies; yields the
    record, the local folder and the bytes by name. $TMPDIR is a folder of the test's own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    with moto_s3(tmp_path / "index-cache") as fs:
        fs.mkdir(BUCKET)
        contents = {name: bytes([number]) * SIZE for number, name in enumerate(NAMES)}
        for name, data in contents.items():
            fs.pipe(f"{BUCKET}/run/embeddings/{name}", data)
        folder = tmp_path / "results/embeddings"
        (folder / "info").mkdir(parents=True)
        record = folder / "info/00000000.json"
        record.write_text(json.dumps({"bulk": URL, "file_sizes": {name: SIZE for name in NAMES}}))
        yield record, folder, contents, fs


def cache_gb(budget_bytes: int) -> dict:
    """A config whose storage.cache_gb is `budget_bytes`."""
    return {"storage": {"cache_gb": budget_bytes / 2**30}}


def scratch() -> list[Path]:
    return sorted(Path(tempfile.tempdir).rglob("*"))


def test_files_are_fetched_on_first_use_and_the_least_recently_used_go_past_the_budget(stored):
    record, folder, contents, _ = stored
    with job_cache([record], cache_gb(5 * SIZE + SIZE // 2)) as cache:
        copies = {name: cache.local(folder / name) for name in NAMES[:7]}
        assert all(copy.read_bytes() == contents[name] for name, copy in list(copies.items())[2:])
        assert cache.files == 7 and cache.fetched == 7 * SIZE and cache.peak == cache.held == 5 * SIZE
        assert [copies[name].exists() for name in NAMES[:7]] == [False, False] + [True] * 5  # the two used first went
        assert all(
            copy.parent == cache.folder and cache.folder.parent == Path(tempfile.tempdir) for copy in copies.values()
        )

        assert cache.local(folder / NAMES[4]) == copies[NAMES[4]] and cache.files == 7  # held: not fetched again
        assert not cache.holds(folder / NAMES[0]) and cache.holds(folder / NAMES[2])
        again = cache.local(folder / NAMES[0])  # went: fetched again, in place of the least recently used (NAMES[2])
        assert again.read_bytes() == contents[NAMES[0]] and cache.files == 8
        assert not cache.holds(folder / NAMES[2]) and cache.holds(folder / NAMES[4])
    assert scratch() == []  # the job's folder goes with it


def test_a_budget_smaller_than_a_file_keeps_the_last_few(stored):
    record, folder, contents, _ = stored
    with job_cache([record], cache_gb(1)) as cache:
        for name in NAMES:
            assert cache.local(folder / name).read_bytes() == contents[name]
        assert cache.held == cache.peak == RECENT_COPIES * SIZE
        assert [cache.holds(folder / name) for name in NAMES] == [False] * (len(NAMES) - RECENT_COPIES) + [
            True
        ] * RECENT_COPIES
        assert len(scratch()) == RECENT_COPIES + 1  # the copies and their folder


def test_a_local_copy_of_the_recorded_size_is_read_in_place_and_other_paths_are_their_own(stored):
    record, folder, contents, _ = stored
    written = folder / NAMES[0]
    written.parent.mkdir()
    written.write_bytes(contents[NAMES[0]])
    stale = folder / NAMES[2]
    stale.write_bytes(b"cut short")
    elsewhere = folder.parent / "index/image.index"
    with job_cache([record], cache_gb(10 * SIZE)) as cache:
        assert cache.url(written) is None and cache.local(written) == written
        assert cache.url(elsewhere) is None and cache.local(elsewhere) == elsewhere
        assert cache.url(stale) == f"{URL}/{NAMES[2]}"
        assert cache.local(stale).read_bytes() == contents[NAMES[2]] and cache.files == 1
    assert stale.read_bytes() == b"cut short"  # the cache never writes into results/
    assert scratch() == []


def test_an_object_of_another_size_than_recorded_is_refused_and_nothing_of_it_is_kept(stored):
    record, folder, _, fs = stored
    fs.pipe(f"{BUCKET}/run/embeddings/{NAMES[1]}", b"x" * (SIZE - 7))
    with job_cache([record], cache_gb(10 * SIZE)) as cache:
        with pytest.raises(ClipflowError, match=f"{URL}/{NAMES[1]}: {SIZE - 7} bytes, {SIZE} were written"):
            cache.local(folder / NAMES[1])
        assert list(cache.folder.iterdir()) == [] and cache.held == 0
        fs.rm(f"{BUCKET}/run/embeddings/{NAMES[3]}")
        with pytest.raises(ClipflowError, match=f"{URL}/{NAMES[3]}: cannot fetch it"):
            cache.local(folder / NAMES[3])
    assert scratch() == []


def test_a_part_for_a_worker_process_travels_empty_and_fetches_into_a_folder_of_its_own(stored):
    record, folder, contents, _ = stored
    with job_cache([record], cache_gb(10 * SIZE)) as cache:
        cache.local(folder / NAMES[0])
        part = pickle.loads(pickle.dumps(cache.part([folder / NAMES[0], folder / "image/elsewhere.npy"])))
        assert part.stored == {folder / NAMES[0]: (f"{URL}/{NAMES[0]}", SIZE)} and part.budget == cache.budget
        with part:
            assert part.local(folder / NAMES[0]).read_bytes() == contents[NAMES[0]]
            assert part.folder != cache.folder and part.files == 1
        assert part.folder is None and cache.local(folder / NAMES[0]).exists()
    assert scratch() == []
