"""Exact re-ranking: an approximate index's k x factor candidates ordered by the stored fp16 embeddings."""

import json

import faiss
import numpy as np
import pandas as pd
import pytest

from clipflow.errors import ClipflowError
from clipflow.index.folder import ClipIndex, write_metadata
from clipflow.index.vectors import write_manifest

DIM, ROWS, FILES, K = 32, 6000, 3, 10


@pytest.fixture(scope="module")
def approximate_folder(tmp_path_factory):
    """An index folder whose image index holds product-quantized codes (approximate similarities, so that its top k
    misses neighbours), over clustered vectors stored as per-shard fp16 files the way the workflow stores them."""
    root = tmp_path_factory.mktemp("rerank")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, DIM))
    vectors = centers[rng.integers(0, 40, ROWS)] + 0.6 * rng.standard_normal((ROWS, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    folder, paths, parquets = root / "index", [], []
    (root / "embeddings").mkdir()
    folder.mkdir()
    for number, part in enumerate(np.array_split(np.arange(ROWS), FILES)):
        paths.append(root / "embeddings" / f"{number:08d}.npy")
        np.save(paths[-1], vectors[part])
        parquets.append(root / "embeddings" / f"{number:08d}.parquet")
        pd.DataFrame({"uid": [f"u{row}" for row in part]}).to_parquet(parquets[-1])
    (folder / "model.json").write_text("{}")
    write_metadata(parquets, folder / "metadata.arrow", folder / "model.json")
    index = faiss.index_factory(DIM, "IVF16,PQ8x4", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors.astype(np.float32))
    index.add(vectors.astype(np.float32))
    index.nprobe = 16  # every list: what it misses, it misses through its codes
    faiss.write_index(index, str(folder / "image.index"))
    assert write_manifest(paths, folder, folder / "image.vectors.json") == ROWS
    queries = vectors[rng.choice(ROWS, 50, replace=False)].astype(np.float32) + 0.1 * rng.standard_normal((50, DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    return folder, vectors.astype(np.float32), queries


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return np.mean([len(set(found) & set(truth)) / K for found, truth in zip(ids, exact)])


def test_reranking_returns_the_exact_top_k_where_the_candidates_hold_it(approximate_folder):
    folder, vectors, queries = approximate_folder
    brute = queries @ vectors.T
    exact = np.argsort(-brute, axis=1, kind="stable")[:, :K]
    plain = ClipIndex(folder, rerank_factor=1)
    reranked = ClipIndex(folder, rerank_factor=8)
    assert reranked.reranks("image") and not plain.reranks("image")
    _, plain_ids = plain.search(queries, "image", K)
    similarities, ids = reranked.search(queries, "image", K)
    _, candidates = plain.index("image").search(queries, K * 8)
    held = 0
    for query in range(len(queries)):
        np.testing.assert_allclose(similarities[query], brute[query, ids[query]], rtol=1e-5, atol=1e-6)
        assert (np.diff(similarities[query]) <= 0).all()
        if set(exact[query]) <= set(candidates[query]):
            held += 1
            assert set(ids[query]) == set(exact[query])
    assert held >= 10  # the test checks something: the codes are coarse, yet 80 candidates often hold the top 10
    assert recall(ids, exact) > recall(plain_ids, exact)


def test_vectors_come_from_the_stored_embeddings(approximate_folder):
    folder, vectors, _ = approximate_folder
    ids = np.array([5999, 0, 2000, 1999, 4001])
    np.testing.assert_allclose(ClipIndex(folder).vectors("image", ids), vectors[ids], rtol=1e-3, atol=1e-3)


def test_a_listing_that_does_not_match_the_index_is_refused(approximate_folder, tmp_path):
    folder, _, queries = approximate_folder
    original = (folder / "image.vectors.json").read_text()
    listing = json.loads(original)
    listing["files"] = listing["files"][:2]
    (folder / "image.vectors.json").write_text(json.dumps(listing))
    try:
        with pytest.raises(ClipflowError, match="vectors for 6000 metadata rows"):
            ClipIndex(folder).search(queries, "image", K)
    finally:
        (folder / "image.vectors.json").write_text(original)
    with pytest.raises(ClipflowError, match="rerank_factor must be"):
        ClipIndex(folder, rerank_factor=0)
