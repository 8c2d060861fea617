"""Index builds: exact below the threshold, autofaiss's approximate indices above it, in one process."""

import numpy as np

from clipflow.index.builder import build_index, fitted_nprobe, with_nprobe


def random_unit_vectors(count, dim, seed):
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


INDEX_OPTIONS = {
    "kind": "auto",
    "exact_below": 1000,
    "metric": "ip",
    "max_index_memory_usage": "1G",
    "max_index_query_time_ms": 10,
    "retrain_growth": 4,
    "max_train_vectors": 100_000,
}


def test_approximate_index_recall_against_brute_force(tmp_path):
    """Above exact_below, autofaiss builds an approximate index; recall@10 must stay above 0.8."""
    parts = [random_unit_vectors(3_000, 64, seed) for seed in range(3)]
    paths = []
    for i, part in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", part.astype(np.float16))
        paths.append(tmp_path / f"{i}.npy")
    infos = build_index(paths, tmp_path / "image.index", tmp_path / "image.infos.json", INDEX_OPTIONS)
    assert infos["exact"] is False and infos["size"] == 9_000 and infos["index_key"] != "IVF1,Flat"

    import faiss

    index = faiss.read_index(str(tmp_path / "image.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    vectors = np.concatenate(parts)
    queries = vectors[::90] + 0.05 * random_unit_vectors(100, 64, 99)
    _, found = index.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall > 0.8, (infos["index_key"], recall)


def test_tuning_lowers_nprobe_until_the_p99_fits_the_budget(tmp_path):
    """A budget no search can meet takes nprobe down to 1; the same vectors under a generous budget keep more."""
    paths = []
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", random_unit_vectors(3_000, 64, i).astype(np.float16))
        paths.append(tmp_path / f"{i}.npy")
    tight = build_index(
        paths, tmp_path / "a.index", tmp_path / "a.json", {**INDEX_OPTIONS, "max_index_query_time_ms": 1e-6}
    )
    loose = build_index(paths, tmp_path / "b.index", tmp_path / "b.json", INDEX_OPTIONS)
    assert tight["index_param"] == "nprobe=1" and tight["index_key"] == loose["index_key"] and tight["tuned_p99_ms"] > 0
    assert loose["tuned_p99_ms"] <= 10
    assert int(loose["index_param"].removeprefix("nprobe=")) > 1


def test_fitted_nprobe_steps_down_in_proportion_to_the_overshoot():
    measured = []

    def p99_ms(nprobe):  # a query's time: fixed costs plus a cost per list probed
        measured.append(nprobe)
        return 0.5 + 0.1 * nprobe

    assert fitted_nprobe(100, p99_ms, 5.0) == (45, 5.0) and measured == [100, 45]  # 100 x 0.95 x 5 / 10.5 ms
    assert fitted_nprobe(30, p99_ms, 5.0) == (30, 3.5)  # already within the budget
    assert fitted_nprobe(100, p99_ms, 0.1) == (1, 0.6)  # nothing fits: the fewest lists


def test_with_nprobe_rewrites_each_kind_of_autofaiss_parameters():
    assert with_nprobe("nprobe=98", 12) == "nprobe=12"
    assert with_nprobe("nprobe=300,ht=2048", 12) == "nprobe=12,ht=2048"
    assert with_nprobe("nprobe=300,efSearch=600,ht=2048", 12) == "nprobe=12,efSearch=24,ht=2048"


def test_exact_index_below_threshold(tmp_path):
    np.save(tmp_path / "a.npy", random_unit_vectors(500, 32, 0).astype(np.float16))
    np.save(tmp_path / "b.npy", np.empty((0, 32), np.float16))  # an empty chunk adds nothing
    infos = build_index(
        [tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "t.index", tmp_path / "t.json", INDEX_OPTIONS
    )
    assert infos["index_key"] == "IVF1,Flat" and infos["exact"] and infos["size"] == 500


def test_autofaiss_can_build_the_opq_indices_it_picks_at_scale():
    """autofaiss picks OPQ...,IVF...,PQ... for large collections; the pinned faiss must accept its calls."""
    from autofaiss.indices.index_factory import index_factory
    import faiss

    index = index_factory(64, "OPQ8_64,IVF16,PQ8", faiss.METRIC_INNER_PRODUCT)
    vectors = random_unit_vectors(2_000, 64, 5)
    index.train(vectors)
    index.add(vectors)
    assert index.ntotal == 2_000


def test_metadata_file_concatenates_chunks_of_different_columns(tmp_path):
    """The index's metadata.arrow is written one chunk at a time; chunks that lack a column, or hold only nulls
    in it, are filled with nulls of the type the others give it."""
    import pyarrow as pa
    import pyarrow.ipc
    import pyarrow.parquet as pq

    from clipflow.index.folder import write_metadata

    chunks = [
        pa.table({"uid": ["a", "b"], "caption": ["one", "two"], "width": pa.array([None, None], pa.null())}),
        pa.table({"uid": ["c"], "caption": ["three"], "width": pa.array([640], pa.int64()), "extra": [1.5]}),
        pa.table({"uid": ["d"], "caption": [None]}),
    ]
    for i, chunk in enumerate(chunks):
        pq.write_table(chunk, tmp_path / f"{i}.parquet")
    (tmp_path / "manifest.json").write_text("{}")
    parquets = [tmp_path / f"{i}.parquet" for i in range(3)]
    assert write_metadata(parquets, tmp_path / "metadata.arrow", tmp_path / "manifest.json") == 4
    table = pa.ipc.open_file(pa.memory_map(str(tmp_path / "metadata.arrow"))).read_all()
    assert table.schema.names == ["uid", "caption", "width", "extra"]
    assert table.column("width").type == pa.int64() and table.column("extra").type == pa.float64()
    assert table.to_pydict() == {
        "uid": ["a", "b", "c", "d"],
        "caption": ["one", "two", "three", None],
        "width": [None, None, 640, None],
        "extra": [None, None, 1.5, None],
    }
