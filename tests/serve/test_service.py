"""`clipflow serve` over real HTTP: clip-retrieval's API, its error answers, images, health and metrics."""

import base64
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from clipflow.errors import ClipflowError
from clipflow.serve.indices import load_indices
from conftest import jpeg
from served import CAPTIONS, DUPLICATE_OF, Server, image_of, indices, planted_vectors  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def server(indices):
    server = Server(indices)
    yield server
    server.stop()


def test_indices_list_and_health(server):
    assert server.request("/indices-list") == (200, ["demo", "bare", "vectors"])
    status, health = server.request("/health")
    assert status == 200 and health["status"] == "ok" and health["indices"] == {"demo": 26, "bare": 26, "vectors": 26}


def test_text_query_finds_its_caption(server):
    status, results = server.knn(text=CAPTIONS[7], modality="text", num_images=5, indice_name="demo")
    assert status == 200 and len(results) == 5
    assert results[0]["id"] == 7 and results[0]["caption"] == CAPTIONS[7]
    assert results[0]["similarity"] == pytest.approx(1, abs=1e-3)
    assert [r["similarity"] for r in results] == sorted((r["similarity"] for r in results), reverse=True)
    assert {"url", "caption", "uid", "id", "similarity"} <= set(results[0])


def test_base64_image_query_finds_its_image(server):
    image = base64.b64encode(image_of(11)).decode()
    status, results = server.knn(image=image, modality="image", num_images=3)  # indice_name null: the first
    assert status == 200 and results[0]["id"] == 11 and results[0]["similarity"] > 0.99


def test_embedding_query_is_normalized_first(server):
    _, [first] = server.knn(text=CAPTIONS[3], modality="text", num_images=1)
    _, results = server.knn(image=base64.b64encode(image_of(3)).decode(), num_images=1)
    status, again = server.request("/metadata", {"ids": [3], "indice_name": "demo"})
    assert status == 200 and again[0]["metadata"]["caption"] == CAPTIONS[3]
    vector = np.random.default_rng(0).standard_normal(384) * 7  # not unit length
    status, results = server.knn(embedding_input=vector.tolist(), num_images=26)
    assert status == 200 and len(results) == 26 and -1 <= results[-1]["similarity"] <= results[0]["similarity"] <= 1


def test_result_ids_page_through_metadata(server):
    status, results = server.knn(text="a blue thing", modality="text", num_images=4, num_result_ids=20)
    assert status == 200 and len(results) == 20
    assert all("caption" in r for r in results[:4]) and all(set(r) == {"id", "similarity"} for r in results[4:])
    rest = [r["id"] for r in results[4:]]
    status, metadata = server.request("/metadata", {"ids": rest, "indice_name": "demo"})
    assert status == 200 and [m["id"] for m in metadata] == rest
    all_captions = CAPTIONS + [f"copy {i} of picture 5" for i in DUPLICATE_OF]
    assert [m["metadata"]["caption"] for m in metadata] == [all_captions[i] for i in rest]
    assert server.request("/metadata", {"ids": []}) == (200, [])


def test_deduplicate_drops_near_duplicates_of_better_results(server):
    query = planted_vectors()[5].tolist()
    _, plain = server.knn(embedding_input=query, num_images=5, indice_name="vectors")
    _, deduplicated = server.knn(embedding_input=query, num_images=5, indice_name="vectors", deduplicate=True)
    assert [r["id"] for r in plain[:3]] == [5, 24, 25] or {r["id"] for r in plain[:3]} == {5, 24, 25}
    assert deduplicated[0]["id"] == 5 and len(deduplicated) == 5
    assert not {24, 25} & {r["id"] for r in deduplicated}


def test_clip_client_request_as_sent(server):
    """The exact JSON clip-retrieval's ClipClient posts (no Content-Type), with its filters turned off."""
    body = {
        "text": CAPTIONS[2],
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": True,
        "use_safety_model": False,
        "use_violence_detector": False,
        "indice_name": "demo",
        "use_mclip": False,
        "aesthetic_score": "",
        "aesthetic_weight": "",
        "modality": "text",
        "num_images": 10,
        "num_result_ids": 10,
        "verbose": False,
    }
    status, results = server.request("/knn-service", raw=json.dumps(body).encode(), content_type="")
    assert status == 200 and results[0]["id"] == 2 and len(results) == 10


def test_front_end_request_as_sent(server):
    """What clip-retrieval's web front end posts (as text/plain, across origins): 40 images of 3,000 ids."""
    body = {
        "text": "a red thing",
        "image": None,
        "image_url": None,
        "modality": "image",
        "num_images": 40,
        "indice_name": "demo",
        "num_result_ids": 3000,
        "use_mclip": False,
        "deduplicate": True,
        "use_safety_model": False,
    }
    request = urllib.request.Request(server.url + "/knn-service", data=json.dumps(body).encode())
    request.add_header("Content-Type", "text/plain;charset=UTF-8")
    request.add_header("Origin", "http://front.example")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        results = json.loads(response.read())
    assert 1 <= len(results) <= 26 and all("caption" in r for r in results)  # up to 40 with metadata


def test_image_of_a_result_comes_from_its_shard(server):
    status, data = server.request("/images/demo/11.jpg")
    assert status == 200 and data == image_of(11)
    assert server.request("/images/bare/11.jpg")[0] == 404  # an index served without its shards
    assert server.request("/images/demo/999.jpg")[0] == 404


def test_metrics_count_requests_and_batches(server):
    server.knn(text="counted", modality="text", num_images=1)
    status, metrics = server.request("/metrics")
    text = metrics.decode()
    assert status == 200
    assert 'clipflow_requests_total{endpoint="/knn-service",status="200"}' in text
    assert 'clipflow_batch_queries_total{stage="encode_text"}' in text
    assert 'clipflow_index_vectors{index="demo"} 26.0' in text


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({}, 400, "text"),
        ({"text": "x", "indice_name": "nope"}, 404, "indice_name"),
        ({"text": "x", "modality": "audio"}, 400, "modality"),
        ({"text": "x", "num_images": 51}, 400, "num_images"),
        ({"text": "x", "num_images": "5"}, 400, "num_images"),
        ({"text": "x", "num_result_ids": 10001}, 400, "num_result_ids"),
        ({"text": "x", "deduplicate": "yes"}, 400, "deduplicate"),
        ({"text": 5}, 400, "text"),
        ({"image": "not base64!"}, 400, "image"),
        ({"image": base64.b64encode(b"<html>not an image</html>").decode()}, 400, "image"),
        ({"image_url": "ftp://example.com/a.jpg"}, 400, "image_url"),
        ({"image_url": "file:///etc/passwd"}, 400, "image_url"),
        ({"embedding_input": [0.1, 0.2]}, 400, "embedding_input"),
        ({"embedding_input": [0.0] * 384}, 400, "embedding_input"),
        ({"text": "x", "use_safety_model": True}, 400, "use_safety_model"),
        ({"text": "x", "use_violence_detector": True}, 400, "use_violence_detector"),
        ({"text": "x", "use_mclip": True}, 400, "use_mclip"),
        ({"text": "x", "aesthetic_score": 9, "aesthetic_weight": 0.5}, 400, "aesthetic_score"),
    ],
)
def test_bad_queries_name_the_field(server, body, status, field):
    answer_status, answer = server.knn(**body)
    assert (answer_status, answer["field"]) == (status, field), answer
    assert answer["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/a.jpg",
        "http://localhost:1/a.jpg",
        "http://[::1]:1/a.jpg",
        "http://10.1.2.3/a.jpg",
        "http://169.254.169.254/latest/meta-data",
    ],
)
def test_image_url_may_not_reach_private_addresses(server, url):
    status, answer = server.knn(image_url=url)
    assert (status, answer["field"]) == (400, "image_url") and "private" in answer["error"], answer


def test_clip_client_defaults_are_refused_clearly(server):
    """ClipClient's defaults ask for a safety model and aesthetic scoring, which this server does not have."""
    body = {
        "text": "x",
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": 40,
    }
    status, answer = server.knn(**body)
    assert status == 400 and "use_safety_model" in answer["error"]


def test_malformed_bodies(server):
    assert server.request("/knn-service", raw=b"{not json")[1]["field"] == "body"
    assert server.request("/knn-service", raw=b"[1, 2]")[1]["field"] == "body"
    status, answer = server.request("/knn-service", raw=b"x" * (2 * 2**20))
    assert (status, answer["field"]) == (413, "body")
    status, answer = server.request("/metadata", {"ids": [0, 26]})
    assert (status, answer["field"]) == (400, "ids")
    assert server.request("/metadata", {"ids": "0"})[1]["field"] == "ids"


def test_image_url_queries(indices, image_server):
    """Fetching image_url: allowed here only because this server is told that private addresses are fine."""
    server = Server(indices, "--allow-private-urls")
    try:
        status, results = server.knn(image_url=f"{image_server}/good/1.jpg", num_images=2)
        assert status == 200 and len(results) == 2
        status, redirected = server.knn(image_url=f"{image_server}/redirect.jpg", num_images=2)
        assert (
            status == 200
            and redirected[0]["id"] == server.knn(image_url=f"{image_server}/good/0.jpg", num_images=1)[1][0]["id"]
        )
        status, answer = server.knn(image_url=f"{image_server}/missing.jpg")
        assert (status, answer["field"]) == (400, "image_url") and "404" in answer["error"]
        status, answer = server.knn(image_url=f"{image_server}/page.jpg")
        assert (status, answer["field"]) == (400, "image_url")
    finally:
        server.stop()


def test_search_params_tune_an_approximate_index(indices, tmp_path):
    """indices.json's search_params go to faiss (e.g. fewer IVF probes for speed); a bad one names itself."""
    folder = tmp_path / "ivf"
    shutil.copytree(indices.parent / "vectors", folder)
    vectors = planted_vectors()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(384), 384, 4, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    for modality in ("image", "text"):
        faiss.write_index(ivf, str(folder / f"{modality}.index"))
    spec = tmp_path / "indices.json"
    spec.write_text(json.dumps({"ivf": {"index": "ivf", "search_params": "nprobe=3"}}))
    served = load_indices(spec, max_batch=64, precision="auto")
    assert faiss.extract_index_ivf(served["ivf"].index.index("image")).nprobe == 3
    spec.write_text(json.dumps({"ivf": {"index": "ivf", "search_params": "nprobes=3"}}))
    with pytest.raises(ClipflowError, match="index 'ivf': search_params 'nprobes=3'"):
        load_indices(spec, max_batch=64, precision="auto")
