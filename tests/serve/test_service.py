"""`clipflow serve` over real HTTP: clip-retrieval's API, its error answers, images, health and metrics."""

import base64
import io
import json
import shutil
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipflow.errors import ClipflowError
from clipflow.serve.indices import load_indices
from clipflow.serve.limits import Limits
from conftest import corrupt_scan_jpeg, jpeg, paced_jpeg
from served import (  # noqa: F401 - indices is a fixture
    AESTHETIC_ROW,
    CAPTIONS,
    DUPLICATE_OF,
    UNSAFE_ROW,
    Server,
    image_of,
    indices,
    planted_vectors,
)


@pytest.fixture(scope="module")
def server(indices):
    server = Server(indices, "--body-timeout", "3", "--header-timeout", "3")
    yield server
    server.stop()


def test_indices_list_and_health(server):
    assert server.request("/indices-list") == (200, ["demo", "bare", "vectors"])
    status, health = server.request("/health")
    assert status == 200 and health["status"] == "ok" and health["indices"] == {"demo": 26, "bare": 26, "vectors": 26}
    started = server.log_text()
    assert "INFO serving" in started and "IO_FLAG" not in started  # clipflow's INFO lines only
    assert not [line for line in started.splitlines() if line.startswith("INFO") and "model" in line.lower()]


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
        ({"text": "x", "indice_name": ["demo"]}, 400, "indice_name"),
        ({"text": "x", "indice_name": {"name": "demo"}}, 400, "indice_name"),
        ({"text": "x", "use_safety_model": "yes"}, 400, "use_safety_model"),
        ({"text": "x", "use_violence_detector": 1}, 400, "use_violence_detector"),
        ({"text": "x", "aesthetic_score": 12}, 400, "aesthetic_score"),
        ({"text": "x", "aesthetic_score": "nine"}, 400, "aesthetic_score"),
        ({"text": "x", "aesthetic_score": [9]}, 400, "aesthetic_score"),
        ({"text": "x", "aesthetic_score": 9, "aesthetic_weight": "heavy"}, 400, "aesthetic_weight"),
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


def test_clip_client_defaults_are_ignored_without_models(server):
    """ClipClient's defaults ask for a safety model, a violence detector and aesthetic scoring: where an index
    has none, they are ignored as clip-retrieval's back end ignores them, and a header says which."""
    body = {
        "text": CAPTIONS[4],
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "text",
        "num_images": 40,
        "indice_name": "demo",
    }
    request = urllib.request.Request(server.url + "/knn-service", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        ignored = response.headers["X-Clipflow-Ignored-Options"]
        results = json.loads(response.read())
    assert ignored == "use_safety_model, use_violence_detector, aesthetic_score"
    assert results[0]["id"] == 4
    urllib.request.urlopen(urllib.request.Request(server.url + "/knn-service", data=json.dumps(body).encode()))
    log = server.log_text()
    for option in ("use_safety_model", "use_violence_detector", "aesthetic_score"):  # logged once, not per query
        assert log.count(f"index 'demo' has no model for {option}: ignored") == 1, log
    status, plain = server.knn(text=CAPTIONS[4], modality="text", num_images=40, deduplicate=True)
    assert [r["id"] for r in plain] == [r["id"] for r in results]


def test_safety_model_drops_what_it_flags(server):
    """The vectors index has an NSFW detector that flags row 7: use_safety_model removes it, and only it."""
    query = planted_vectors()[UNSAFE_ROW].tolist()
    _, plain = server.knn(embedding_input=query, num_images=26, indice_name="vectors")
    _, safe = server.knn(embedding_input=query, num_images=26, indice_name="vectors", use_safety_model=True)
    assert plain[0]["id"] == UNSAFE_ROW and len(plain) == 26
    assert [r["id"] for r in safe] == [r["id"] for r in plain if r["id"] != UNSAFE_ROW]


def test_aesthetic_score_steers_the_query(server):
    """As clip-retrieval: the query plus aesthetic_weight times the asked rating's embedding, renormalized.
    Rating 9's embedding is row 12's vector, rating 3's is zero (no change)."""
    vectors = planted_vectors()
    query = vectors[3].tolist()
    _, plain = server.knn(embedding_input=query, num_images=3, indice_name="vectors")
    _, unchanged = server.knn(embedding_input=query, num_images=3, indice_name="vectors", aesthetic_score=3)
    _, steered = server.knn(
        embedding_input=query, num_images=3, indice_name="vectors", aesthetic_score="9", aesthetic_weight=1
    )
    assert plain[0]["id"] == 3 and plain[1]["id"] != AESTHETIC_ROW
    assert [r["id"] for r in unchanged] == [r["id"] for r in plain]
    assert {r["id"] for r in steered[:2]} == {3, AESTHETIC_ROW}
    expected = (vectors[3] + vectors[AESTHETIC_ROW]) / np.linalg.norm(vectors[3] + vectors[AESTHETIC_ROW])
    assert steered[0]["similarity"] == pytest.approx(float(expected @ vectors[3]), abs=2e-3)


def test_results_carry_their_shard_image_address(server):
    """clip-retrieval's front end shows each result's `url` column, or another named by `--url_column`:
    shard_url serves the image out of its shard even where the original URL is dead."""
    _, results = server.knn(text=CAPTIONS[9], modality="text", num_images=2, num_result_ids=5, indice_name="demo")
    assert results[0]["shard_url"] == f"{server.url}/images/demo/9.jpg"
    assert server.request(results[0]["shard_url"].removeprefix(server.url)) == (200, image_of(9))
    status, metadata = server.request("/metadata", {"ids": [results[4]["id"]], "indice_name": "demo"})
    assert metadata[0]["metadata"]["shard_url"] == f"{server.url}/images/demo/{results[4]['id']}.jpg"
    _, bare = server.knn(text=CAPTIONS[9], modality="text", num_images=1, indice_name="bare")
    assert "shard_url" not in bare[0]


def test_unknown_paths_and_methods(server):
    for path in ("/favicon.ico", "/nope", "/images/demo/x.jpg"):
        assert server.request(path) == (404, {"error": f"no such path: {path}", "field": None})
    assert server.request("/nope", {"text": "x"})[0] == 404
    status, answer = server.request("/knn-service")
    assert status == 405 and "POST" in answer["error"]
    request = urllib.request.Request(server.url + "/knn-service", method="OPTIONS")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204 and "POST" in response.headers["Access-Control-Allow-Methods"]


def test_long_text_is_cut_before_tokenizing(server):
    """A 900 KB text (a 9 MB one took 10 s to tokenize, holding up every other text query) gets the results
    of its first 10,000 characters: CLIP reads no further anyway."""
    text = CAPTIONS[6] + " " + "word " * 180_000
    status, results = server.knn(text=text, modality="text", num_images=3)
    assert status == 200
    assert results == server.knn(text=text[:10_000], modality="text", num_images=3)[1]


def test_image_pixel_limit(server):
    """A PNG's header claims 13000x13000 pixels (~500 MB decoded): refused before decoding."""
    header = struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    png = b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    status, answer = server.knn(image=base64.b64encode(png).decode())
    assert (status, answer["field"]) == (413, "image") and "13000x13000" in answer["error"]
    cut = jpeg(seed=1)[: len(jpeg(seed=1)) * 6 // 10]
    status, answer = server.knn(image=base64.b64encode(cut).decode())
    assert (status, answer["field"]) == (400, "image") and "damaged" in answer["error"]


ODD_VALUES = [[], {}, [[1]], {"a": {"b": 1}}, 1.5, -1, 2**70, "x", "", True, None]
FIELDS = [
    "text", "image", "image_url", "embedding_input", "modality", "num_images", "num_result_ids", "indice_name",
    "deduplicate", "use_safety_model", "use_violence_detector", "use_mclip", "aesthetic_score", "aesthetic_weight",
]  # fmt: skip


def test_any_json_type_in_any_field_is_answered_without_a_500(server):
    """Every field of both POST endpoints, given each JSON type: a 200 or a 4xx naming a field, never a 500."""
    for field in FIELDS:
        for value in ODD_VALUES:
            status, answer = server.knn(**{"text": "x", "indice_name": "demo", field: value})
            assert status == 200 or (400 <= status < 500 and answer["field"]), (field, value, status, answer)
    for field in ("ids", "indice_name"):
        for value in ODD_VALUES:
            status, answer = server.request("/metadata", {"ids": [1], "indice_name": "demo", field: value})
            assert status == 200 or (400 <= status < 500 and answer["field"]), (field, value, status, answer)


def test_huge_numbers_and_malformed_urls_are_4xx_naming_the_field(server):
    """Integers past Python's 4,300-digit parsing limit or past float's range, and URLs yarl cannot parse."""
    huge = b"1" + b"0" * 5000
    status, answer = server.request("/knn-service", raw=b'{"text": "x", "num_images": ' + huge + b"}")
    assert (status, answer["field"]) == (400, "body"), answer
    for field in ("aesthetic_score", "aesthetic_weight"):
        status, answer = server.knn(**{"text": "x", "indice_name": "demo", "aesthetic_score": 9, field: 10**400})
        assert (status, answer["field"]) == (400, field), answer
    status, answer = server.knn(embedding_input=[10**400] + [0.1] * 383)
    assert (status, answer["field"]) == (400, "embedding_input"), answer
    for url in ("http://[::1", "http://example.com:70000/a.jpg"):
        status, answer = server.knn(image_url=url)
        assert (status, answer["field"]) == (400, "image_url"), (url, answer)
    assert server.request("/images/demo/" + "9" * 5000 + ".jpg")[0] == 404
    assert server.request("/images/demo/" + "9" * 19 + ".jpg")[0] == 404
    assert "Traceback" not in server.log_text()


def test_deeply_nested_json_is_a_400(server):
    status, answer = server.request("/knn-service", raw=b"[" * 100_000 + b"]" * 100_000)
    assert (status, answer["field"]) == (400, "body") and "nested" in answer["error"]
    status, answer = server.request("/knn-service", {"text": "x", "indice_name": [[[[["demo"]]]]]})
    assert (status, answer["field"]) == (400, "indice_name")


def test_concurrent_first_image_requests(indices):
    """On a fresh server, every image of a burst of concurrent first requests is served."""
    server = Server(indices)
    try:
        with ThreadPoolExecutor(26) as pool:
            answers = list(pool.map(lambda i: server.request(f"/images/demo/{i}.jpg"), [*range(26)] * 4))
        assert answers == [(200, image_of(i)) for i in [*range(26)] * 4]
    finally:
        server.stop()


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
        # A 450 KB image arriving in pieces is read whole: the same results as the image sent inline.
        status, paced = server.knn(image_url=f"{image_server}/paced.jpg", num_images=3)
        assert status == 200 and paced == server.knn(image=base64.b64encode(paced_jpeg()).decode(), num_images=3)[1]
        for name in ("oversized.jpg", "oversized-unannounced.jpg"):  # 3 MB, the limit here 1 MB
            status, answer = server.knn(image_url=f"{image_server}/{name}")
            assert (status, answer["field"]) == (413, "image_url") and "over 1,048,576 bytes" in answer["error"]
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
        (folder / f"{modality}.infos.json").unlink()  # the merge's record of the flat index's files
    spec = tmp_path / "indices.json"
    spec.write_text(json.dumps({"ivf": {"index": "ivf", "search_params": "nprobe=3"}}))
    served = load_indices(spec, Limits())
    assert faiss.extract_index_ivf(served["ivf"].index.index("image")).nprobe == 3
    spec.write_text(json.dumps({"ivf": {"index": "ivf", "search_params": "nprobes=3"}}))
    with pytest.raises(ClipflowError, match="index 'ivf': search_params 'nprobes=3'"):
        load_indices(spec, Limits())


def test_a_client_that_goes_away_mid_body_is_not_a_server_error(server):
    import socket

    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(b"POST /knn-service HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            client.sendall(b'Content-Length: 1000\r\n\r\n{"text": "a cat')  # then gone, the body unsent
    time.sleep(1)
    status, metrics = server.request("/metrics")
    assert 'endpoint="/knn-service",status="500"' not in metrics.decode()
    assert 'clipflow_requests_total{endpoint="/knn-service",status="499"} 3.0' in metrics.decode()  # nginx's
    assert "Traceback" not in server.log_text() and "the client closed the connection" in server.log_text()
    assert server.knn(text="still answering")[0] == 200


def test_shard_url_comes_from_the_server_not_from_the_host_header(server):
    request = urllib.request.Request(
        server.url + "/knn-service",
        data=json.dumps({"text": CAPTIONS[4], "num_images": 1, "indice_name": "demo"}).encode(),
        headers={"Host": "evil.example", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        [first] = json.loads(response.read())
    assert first["shard_url"] == f"{server.url}/images/demo/{first['id']}.jpg"


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"POST /knn-service HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        client.sendall(b"Content-Length: 10000000000\r\n\r\n")  # 10 GB declared, not a byte of it sent
        answer = client.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413") and '"field": "body"' in answer


def test_a_clients_large_images_do_not_hold_the_others_queries(server):
    """Six 8000x8000 PNGs (under the 64 MP limit, ~1.7 s each to decode here) take the large images' lane; a
    normal image query meanwhile is answered before they are, and a large one that waited too long gets a 503."""
    large = png_base64(Image.new("RGB", (8000, 8000), (10, 200, 30)))
    normal = base64.b64encode(image_of(12)).decode()
    with ThreadPoolExecutor(6) as pool:
        floods = [pool.submit(server.knn, image=large, num_images=1) for _ in range(6)]
        time.sleep(0.5)  # all six are queued
        status, results = server.knn(image=normal, num_images=1)
        finished_first = sum(flood.done() for flood in floods)
        statuses = [flood.result()[0] for flood in floods]
    assert status == 200 and results[0]["id"] == 12
    assert finished_first <= 2, "the normal query waited behind the large images"
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_jpeg_with_a_corrupt_scan_or_over_pillows_limit_is_refused(server):
    status, answer = server.knn(image=base64.b64encode(corrupt_scan_jpeg()).decode())
    assert (status, answer["field"]) == (400, "image") and "Corrupt JPEG data" in answer["error"]
    header = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)  # 200 MP: over twice Pillow's own 89 MP
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    png = b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    status, answer = server.knn(image=base64.b64encode(png).decode())
    assert (status, answer["field"]) == (413, "image") and "over the limit" in answer["error"]


def test_an_image_that_waits_too_long_for_its_lane_is_a_503():
    import asyncio

    from clipflow.serve.encoders import ImageDecoder
    from clipflow.serve.errors import RequestError

    decoder = ImageDecoder(Limits(decode_wait_seconds=-1))
    with pytest.raises(RequestError) as refused:
        asyncio.run(decoder.pixels(jpeg(seed=2), "image", lambda image: image))
    assert refused.value.status == 503 and "busy" in refused.value.message


def test_a_body_that_drips_is_a_408_and_malformed_requests_log_one_line_each(server):
    import socket

    for sent in (b"", b"GET /heal", b"GET /health HTTP/1.1\r\nHost: x\r\n"):  # idle, half a line, no blank line
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
            client.sendall(sent)
            started = time.monotonic()
            assert client.recv(65536) == b"", sent  # closed, without an answer
            assert 2 < time.monotonic() - started < 10, sent

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(b"POST /knn-service HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        client.sendall(b'Content-Length: 100\r\n\r\n{"text": ')  # and no more
        started = time.monotonic()
        answer = client.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 3 s" in answer
        assert time.monotonic() - started < 20
    malformed = [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"]
    malformed.append(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    for request in malformed:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(request)
            assert client.recv(65536).startswith(b"HTTP/1.0 400")
    time.sleep(0.5)
    lines = [line for line in server.log_text().splitlines() if "Error handling request" in line]
    assert len(lines) >= 2 and all(line.startswith("WARNING") and ": 400 " in line for line in lines), lines
    assert "Traceback" not in server.log_text()
