"""clip-retrieval's own clients against `clipflow serve`, with their defaults: ClipClient (from clip-retrieval
2.45.0's wheel, installed without its dependencies by scripts/install.sh) and its web front end in Chromium."""

import functools
import http.server
import importlib.util
import json
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect

from served import CAPTIONS, UNSAFE_ROW, Server, browser, image_of, indices, planted_vectors  # noqa: F401 - fixtures


def clip_retrieval_files() -> Path:
    """Where the wheel put its files (found without importing the package, whose __init__ needs Flask)."""
    return Path(importlib.util.find_spec("clip_retrieval").submodule_search_locations[0])


def clip_client_module():
    """clip_retrieval/clip_client.py itself: it needs only requests."""
    spec = importlib.util.spec_from_file_location("clip_client", clip_retrieval_files() / "clip_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(indices, image_server):
    server = Server(indices, "--allow-private-urls")
    yield server
    server.stop()


def test_clip_client_with_its_defaults(server, image_server, tmp_path):
    """Defaults: deduplicate, safety model, violence detector, aesthetic score 9 at weight 0.5, 40 images."""
    client_module = clip_client_module()
    ClipClient, Modality = client_module.ClipClient, client_module.Modality  # noqa: N806 - their names
    demo = ClipClient(f"{server.url}/knn-service", "demo", modality=Modality.TEXT)
    results = demo.query(text=CAPTIONS[8])
    assert results[0]["id"] == 8 and results[0]["caption"] == CAPTIONS[8]
    assert {"url", "caption", "similarity", "shard_url"} <= set(results[0])

    (tmp_path / "query.jpg").write_bytes(image_of(11))
    images = ClipClient(f"{server.url}/knn-service", "demo")
    assert images.query(image=str(tmp_path / "query.jpg"))[0]["id"] == 11
    by_url = images.query(image=f"{image_server}/paced.jpg")  # an http string goes as image_url
    assert len(by_url) >= 1 and "similarity" in by_url[0]

    # The 'vectors' index has a safety model: ClipClient's default use_safety_model removes what it flags.
    vectors = ClipClient(f"{server.url}/knn-service", "vectors", deduplicate=False, aesthetic_score=None)
    query = planted_vectors()[UNSAFE_ROW].tolist()
    assert UNSAFE_ROW not in [r["id"] for r in vectors.query(embedding_input=query)]
    unfiltered = ClipClient(f"{server.url}/knn-service", "vectors", deduplicate=False, use_safety_model=False)
    assert unfiltered.query(embedding_input=query)[0]["id"] == UNSAFE_ROW


class FrontEndFiles(http.server.SimpleHTTPRequestHandler):
    """Serves clip-retrieval's built front end and the config.json its `clip-retrieval front` command writes."""

    config: bytes = b""

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802 - the base class names it so
        if self.path == "/config.json":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.config)))
            self.end_headers()
            self.wfile.write(self.config)
        else:
            super().do_GET()


@pytest.fixture(scope="module")
def front_end(server):
    """clip_front's config: the back end, the index, and `--url_column shard_url` so that each image is read
    from this server's shards (the demo's original URLs are dead once its run is over)."""
    config = {"defaultBackend": server.url, "defaultIndex": "demo", "urlColumn": "shard_url"}
    handler = type("Handler", (FrontEndFiles,), {"config": json.dumps(config).encode()})
    build = clip_retrieval_files().parent / "front" / "build"
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(build)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_front_end_with_its_defaults_shows_the_images(browser, front_end, server):
    """Safe mode and violence removal ticked, duplicates hidden, aesthetic score unset: the front end's
    first search shows its results, each image loaded from the shards, and no JavaScript error."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, requests = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.post_data_json) if request.method == "POST" else None)
    page.goto(f"{front_end}/?query={CAPTIONS[7].replace(' ', '+')}")
    pictures = page.locator("clip-front img.pic")
    expect(pictures.first).to_be_visible(timeout=30_000)
    page.wait_for_load_state("networkidle")
    knn = next(body for body in requests if body and "num_result_ids" in body)
    assert knn["use_safety_model"] is True and knn["use_violence_detector"] is True and knn["deduplicate"] is True
    loaded = page.evaluate(
        "[...document.querySelector('clip-front').shadowRoot.querySelectorAll('img.pic')]"
        ".map((i) => [i.src, i.naturalWidth])"
    )
    assert loaded and all(width > 0 for _, width in loaded), loaded
    assert all(src.startswith(f"{server.url}/images/demo/") for src, _ in loaded)
    assert errors == []
