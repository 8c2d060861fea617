"""Index builds: exact below the threshold, autofaiss's approximate indices above it, in one process."""

import numpy as np

from clipflow.index.builder import build_index


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
