"""The index as jobs: what is trained for which pool, parts merged into on-disk lists searching exactly like one
index built from the same trained index, and, through Snakemake, a new input file that adds parts and keeps ids."""

import json
import os

import faiss
import numpy as np
import pyarrow as pa
import pytest

from clipflow.errors import ClipflowError
from clipflow.index.builder import (
    add_part,
    ivfdata_path,
    merge_parts,
    train_index,
    trained_rows,
    training_chunks,
)
from clipflow.index.folder import ClipIndex, is_exact
from conftest import planned_jobs, precomputed_config, run_snakemake, write_config, write_precomputed_input

OPTIONS = {
    "kind": "auto",
    "exact_below": 1000,
    "retrain_growth": 4,
    "metric": "ip",
    "max_index_memory_usage": "1G",
    "max_index_query_time_ms": 10,
    "max_train_vectors": 100_000,
}


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    """Rows around 30 centres, unit length, as fp16 like the workflow's embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim))
    vectors = centres[rng.integers(0, 30, count)] + rng.standard_normal((count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def test_training_is_kept_until_the_pool_outgrows_it():
    assert [trained_rows(rows, OPTIONS) for rows in (999, 1000, 3999, 4000, 15_999, 16_000)] == [
        0, 1000, 1000, 4000, 4000, 16_000
    ]  # fmt: skip
    assert trained_rows(10**9, {**OPTIONS, "kind": "flat"}) == 0
    assert trained_rows(500, {**OPTIONS, "kind": "autofaiss"}) == 500  # under exact_below: the whole pool
    assert trained_rows(10_000, {**OPTIONS, "retrain_growth": 1.5}) == 7593  # 1000 x 1.5^5
    chunks = {"a": 400, "b": 400, "c": 400, "d": 100}
    assert training_chunks(chunks, 0) == ["a"]
    assert training_chunks(chunks, 800) == ["a", "b"]
    assert training_chunks(chunks, 801) == ["a", "b", "c"]
    assert training_chunks(chunks, 10_000) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("key", ["IVF16,Flat", "OPQ8_64,IVF16,PQ8"])
def test_merged_parts_search_as_one_index_from_the_same_training(tmp_path, key):
    """Parts of uneven sizes (one empty) merged on disk: the same neighbours and similarities as the trained index
    with every vector added at once, ids counted across the parts in order."""
    from autofaiss.indices.index_factory import index_factory

    sizes = [700, 0, 1300, 450]
    vectors = unit_rows(sum(sizes), 64, seed=1)
    trained = index_factory(64, key, faiss.METRIC_INNER_PRODUCT)
    trained.train(vectors.astype(np.float32))
    faiss.write_index(trained, str(tmp_path / "trained.index"))
    parts = []
    for number, part in enumerate(np.split(vectors, np.cumsum(sizes)[:-1])):
        np.save(tmp_path / f"{number}.npy", part)
        parts.append(tmp_path / f"part{number}.index")
        assert add_part(tmp_path / "trained.index", [tmp_path / f"{number}.npy"], parts[-1]) == sizes[number]
    (tmp_path / "trained.json").write_text(json.dumps({"index_key": key, "exact": False}))
    (tmp_path / "folder").mkdir()
    merged_path = tmp_path / "folder/image.index"
    merged_infos = merge_parts(
        tmp_path / "trained.index", tmp_path / "trained.json", parts, merged_path, tmp_path / "infos.json", OPTIONS
    )
    assert merged_infos["size"] == len(vectors) and merged_infos["index_param"].startswith("nprobe=")
    assert ivfdata_path(merged_path).exists() and not ivfdata_path(merged_path).with_suffix(".growing").exists()

    merged = faiss.read_index(str(merged_path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    whole = faiss.read_index(str(tmp_path / "trained.index"))
    whole.add(vectors.astype(np.float32))
    for index in (merged, whole):
        faiss.ParameterSpace().set_index_parameters(index, "nprobe=4")
    queries = vectors[::37].astype(np.float32)
    merged_found, whole_found = merged.search(queries, 10), whole.search(queries, 10)
    np.testing.assert_array_equal(merged_found[1], whole_found[1])
    np.testing.assert_allclose(merged_found[0], whole_found[0], rtol=1e-5)
    assert merged_found[1][:, 0].tolist() == list(range(0, len(vectors), 37))  # each row finds itself


def test_exact_index_scans_every_vector(tmp_path):
    """Below exact_below the trained index is one list: search equals a flat scan, and is not re-ranked."""
    vectors = unit_rows(600, 32, seed=2)
    np.save(tmp_path / "0.npy", vectors)
    infos = train_index(
        [tmp_path / "0.npy"], trained_rows(600, OPTIONS), OPTIONS, tmp_path / "t.index", tmp_path / "t.json"
    )
    assert infos["exact"] and infos["index_key"] == "IVF1,Flat"
    add_part(tmp_path / "t.index", [tmp_path / "0.npy"], tmp_path / "p.index")
    merge_parts(
        tmp_path / "t.index",
        tmp_path / "t.json",
        [tmp_path / "p.index"],
        tmp_path / "e.index",
        tmp_path / "e.json",
        OPTIONS,
    )
    index = faiss.read_index(str(tmp_path / "e.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    assert is_exact(index)
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors.astype(np.float32))
    queries = unit_rows(20, 32, seed=3).astype(np.float32)
    np.testing.assert_array_equal(index.search(queries, 10)[1], flat.search(queries, 10)[1])


def metadata_uids(workdir) -> list:
    with pa.memory_map(str(workdir / "results/index/metadata.arrow")) as source:
        return pa.ipc.open_file(source).read_all()["uid"].to_pylist()


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """3,000 rows (12 shards, 6 chunks) indexed as jobs with autofaiss's index trained for 1,000 rows; then a new
    input file of 1,000 rows. Returns the workdir, the dry run's jobs for the new file, and what the first index
    found and held."""
    workdir = tmp_path_factory.mktemp("grown")
    write_precomputed_input(workdir, "part-0", 0, unit_rows(3000, 128, seed=5))
    config = precomputed_config(index={"kind": "autofaiss", "exact_below": 1000, "retrain_growth": 10})
    write_config(workdir, config)
    targets = ["results/index/image.index", "results/index/metadata.arrow", "results/index/image.vectors.json"]
    run_snakemake(workdir, "--cores", "2", *targets)
    before = {
        "trained": (workdir / "results/index/image/trained.index").stat().st_mtime_ns,
        "parts": {p.name: p.stat().st_mtime_ns for p in (workdir / "results/index/image/parts").glob("*.index")},
        "uids": metadata_uids(workdir),
        "found": ClipIndex(workdir / "results/index").search(
            np.load(workdir / "data/part-0.npz")["img"][:300:7], "image", 5
        )[1],
    }
    write_precomputed_input(workdir, "part-1", 3000, unit_rows(1000, 128, seed=6))
    dry = run_snakemake(workdir, "--dry-run", *targets)
    run_snakemake(workdir, "--cores", "2", *targets)
    return workdir, planned_jobs(dry.stdout + dry.stderr), before


def test_first_build_is_approximate_and_trained_on_the_first_chunks(grown):
    workdir, _, before = grown
    infos = json.loads((workdir / "results/index/image.infos.json").read_text())
    assert infos["trained_rows"] == 1000 and infos["train_vectors"] == 1000  # the first 2 chunks' rows
    assert not infos["exact"] and infos["index_key"].startswith("IVF") and infos["size"] == 4000
    assert len(before["parts"]) == 6


def test_a_new_input_file_adds_parts_and_keeps_ids(grown):
    workdir, planned, before = grown
    assert planned == sorted(
        ["index_add[image]"] * 2 + ["precomputed_chunk[00000012]", "precomputed_chunk[00000014]"]
        + ["index_merge[image]", "list_index_parts[image]", "index_metadata", "index_vectors[image]", "list_chunks"]
    )  # fmt: skip
    parts = {p.name: p.stat().st_mtime_ns for p in (workdir / "results/index/image/parts").glob("*.index")}
    assert {name: parts[name] for name in before["parts"]} == before["parts"]  # old parts untouched
    assert len(parts) == 8
    assert (workdir / "results/index/image/trained.index").stat().st_mtime_ns == before["trained"]
    uids = metadata_uids(workdir)
    assert uids[:3000] == before["uids"] and len(uids) == 4000
    index = ClipIndex(workdir / "results/index")
    np.testing.assert_array_equal(
        index.search(np.load(workdir / "data/part-0.npz")["img"][:300:7], "image", 5)[1][:, 0], before["found"][:, 0]
    )
    new = np.load(workdir / "data/part-1.npz")["img"][::50]
    assert index.search(new, "image", 1)[1][:, 0].tolist() == list(range(3000, 4000, 50))
    # searched without faiss's read-ahead threads on its on-disk lists (3x the time of a query alone)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.index("image")).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.prefetch_nthread == 0


def test_merged_index_equals_the_trained_index_given_every_vector(grown):
    """The jobs' index searches exactly like the trained index with every embedding file added in order."""
    workdir, _, _ = grown
    folder = workdir / "results/index"
    merged = faiss.read_index(str(folder / "image.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    whole = faiss.read_index(str(folder / "image/trained.index"))
    for entry, _ in json.loads((folder / "image.vectors.json").read_text())["files"]:
        whole.add(np.load(folder / entry).astype(np.float32))
    params = json.loads((folder / "image.infos.json").read_text())["index_param"]
    faiss.ParameterSpace().set_index_parameters(whole, params)
    queries = unit_rows(40, 128, seed=9).astype(np.float32)
    np.testing.assert_array_equal(merged.search(queries, 10)[1], whole.search(queries, 10)[1])


def test_outgrowing_the_training_trains_again(grown):
    """Past retrain_growth x the trained rows, the index trains again and every part is added again."""
    workdir, _, _ = grown
    config = (workdir / "config.yaml").read_text().replace("retrain_growth: 10", "retrain_growth: 2")
    (workdir / "regrown.yaml").write_text(config)
    result = run_snakemake(
        workdir, "--dry-run", "results/index/image.index", "--configfile", str(workdir / "regrown.yaml")
    )
    planned = planned_jobs(result.stdout + result.stderr)
    assert planned == sorted(
        ["index_train[image]"]
        + ["index_add[image]"] * 8
        + ["index_merge[image]", "list_index_parts[image]", "list_training_chunks"]
    )


def test_a_short_lists_file_is_refused_by_name_without_a_record(tmp_path):
    """The merge's record of its files' sizes may be gone (a run removes it to rebuild): the mapped lists are still
    checked against the length the index gives them, so a search never reads past their end (SIGBUS)."""
    vectors = unit_rows(500, 16, seed=3)
    trained = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    trained.train(vectors.astype(np.float32))
    faiss.write_index(trained, str(tmp_path / "trained.index"))
    np.save(tmp_path / "0.npy", vectors)
    add_part(tmp_path / "trained.index", [tmp_path / "0.npy"], tmp_path / "part.index")
    (tmp_path / "trained.json").write_text(json.dumps({"index_key": "IVF8,Flat", "exact": True}))
    folder = tmp_path / "index"
    folder.mkdir()
    parts = [tmp_path / "part.index"]
    trained_files = tmp_path / "trained.index", tmp_path / "trained.json"
    merge_parts(*trained_files, parts, folder / "image.index", folder / "image.infos.json", OPTIONS)
    infos = json.loads((folder / "image.infos.json").read_text())
    assert set(infos["file_sizes"]) == {"image.index", "image.ivfdata"} == set(infos["file_sha256"])
    (folder / "image.infos.json").unlink()
    with pa.OSFile(str(folder / "metadata.arrow"), "wb") as sink:
        pa.ipc.new_file(sink, pa.schema([("uid", pa.string())])).close()
    (folder / "model.json").write_text("{}")
    lists = ivfdata_path(folder / "image.index")
    os.truncate(lists, lists.stat().st_size - 1)
    with pytest.raises(ClipflowError, match=rf"damaged index: {lists}: \d+ bytes, \d+ listed"):
        ClipIndex(folder).index("image")


def test_a_truncated_part_is_refused_by_name_before_the_merge_reads_it(tmp_path):
    """Each part's record lists its size and sha256: a part cut short is named, not read by faiss as a whole."""
    vectors = unit_rows(300, 16, seed=4)
    trained = faiss.index_factory(16, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    trained.train(vectors.astype(np.float32))
    faiss.write_index(trained, str(tmp_path / "trained.index"))
    (tmp_path / "trained.json").write_text(json.dumps({"index_key": "IVF4,Flat", "exact": True}))
    np.save(tmp_path / "0.npy", vectors)
    part = tmp_path / "parts/0.index"
    part.parent.mkdir()
    assert add_part(tmp_path / "trained.index", [tmp_path / "0.npy"], part) == 300
    record = json.loads(part.with_suffix(".json").read_text())
    assert record["vectors"] == 300 and record["file_sizes"] == {"0.index": part.stat().st_size}
    assert set(record["file_sha256"]) == {"0.index"}
    os.truncate(part, part.stat().st_size - 8)
    trained_files = tmp_path / "trained.index", tmp_path / "trained.json"
    with pytest.raises(ClipflowError, match=rf"damaged index part: {part}: \d+ bytes, \d+ were written"):
        merge_parts(*trained_files, [part], tmp_path / "image.index", tmp_path / "image.infos.json", OPTIONS)
    assert not (tmp_path / "image.index").exists()
