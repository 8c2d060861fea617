"""A real index folder as the workflow builds it, a running `clipflow serve` over it, and a real browser, for
the serve and search tests."""

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from playwright.sync_api import sync_playwright

from clipflow.embed import shard_outputs
from clipflow.embed.embedder import embed_chunk
from clipflow.embed.model import fetch_model
from clipflow.index.builder import build_index
from clipflow.index.vectors import write_manifest
from clipflow.index.folder import write_metadata
from conftest import REPO, free_port, jpeg, write_shard

CAPTIONS = [f"picture number {i} of a {color} thing" for i, color in enumerate(["red", "green", "blue"] * 8)]
DUPLICATE_OF = {24: 5, 25: 5}  # rows 24 and 25 hold row 5's image again


def image_of(row: int) -> bytes:
    return jpeg(seed=DUPLICATE_OF.get(row, row), color=((row * 40) % 256, 90, 160))


def build_index_folder(root: Path) -> Path:
    """A real index as the workflow builds it: one shard, random-weight ViT-S-32, exact faiss indices."""
    shards, index = root / "shards", root / "index"
    shards.mkdir()
    index.mkdir()
    captions = CAPTIONS + [f"copy {i} of picture 5" for i in DUPLICATE_OF]
    samples = [(f"00000000{row:04d}", image_of(row), caption) for row, caption in enumerate(captions)]
    write_shard(shards / "00000000.tar", samples)
    fetch_model("ViT-S-32", "none", None, "unused", index / "model.json")
    embeddings = root / "embeddings"
    embed_chunk(
        [shards / "00000000.tar"], index / "model.json", embeddings, root / "chunk.json", [], "fp32", "cpu", 8, 0
    )
    outputs = shard_outputs(embeddings, "00000000")
    for modality in ("image", "text"):
        build_index(
            [outputs[modality]],
            index / f"{modality}.index",
            index / f"{modality}.infos.json",
            {
                "kind": "flat",
                "exact_below": 1000,
                "metric": "ip",
                "max_index_memory_usage": "1G",
                "max_index_query_time_ms": 10,
                "retrain_growth": 4,
                "max_train_vectors": 100_000,
            },
        )
        write_manifest([outputs[modality]], index, index / f"{modality}.vectors.json")
    write_metadata([outputs["metadata"]], index / "metadata.arrow", index / "model.json")
    build_vector_index(root / "vectors", index / "model.json")
    write_score_models(root)
    spec = {
        "demo": {"index": "index", "shards": "shards"},
        "bare": {"index": "index"},
        "vectors": {"index": "vectors", "aesthetic_embeddings": "aesthetic", "safety_model": "safety.pt"},
    }
    (root / "indices.json").write_text(json.dumps(spec))
    return root / "indices.json"


def planted_vectors() -> np.ndarray:
    """Random unit vectors (nearly orthogonal in 384 dimensions), rows 24 and 25 near-copies of row 5."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((26, 384)).astype(np.float32)
    for row in DUPLICATE_OF:
        vectors[row] = vectors[5] + 0.1 * rng.standard_normal(384)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


UNSAFE_ROW, AESTHETIC_ROW = 7, 12  # of the planted vectors: what the safety model flags, what rating 9 looks like


def write_score_models(root: Path) -> None:
    """For the planted vectors: an NSFW detector in clip-retrieval's layout that flags row 7's vector (and
    nothing far from it), and aesthetic embeddings whose rating 9 is row 12's vector (the others zero)."""
    import torch

    flagged = torch.from_numpy(planted_vectors()[UNSAFE_ROW])
    identity = {"weight": torch.eye(2), "bias": torch.zeros(2)}
    layers = [
        {"weight": torch.stack([flagged, -flagged]), "bias": torch.tensor([-0.5, 0.0])},  # then ReLU
        identity,  # then ReLU
        identity,
        {"weight": torch.tensor([[10.0, 0.0]]), "bias": torch.zeros(1)},
    ]
    state = {
        f"layers.{3 * i if i < 2 else 4 + i}.{name}": t for i, layer in enumerate(layers) for name, t in layer.items()
    }
    torch.save(state, root / "safety.pt")
    (root / "aesthetic").mkdir()
    for rating in range(10):
        vector = planted_vectors()[AESTHETIC_ROW] if rating == 9 else np.zeros(384, np.float32)
        np.save(root / "aesthetic" / f"rating{rating}.npy", vector)


def build_vector_index(folder: Path, manifest: Path) -> None:
    """An index of crafted embeddings (the random-weight model makes every image look alike)."""
    folder.mkdir()
    vectors = planted_vectors()
    np.save(folder / "vectors.npy", vectors.astype(np.float16))
    pd.DataFrame(
        {
            "uid": [f"v{i}" for i in range(26)],
            "url": [f"http://x/{i}" for i in range(26)],
            "caption": [f"vector {i}" for i in range(26)],
        }
    ).to_parquet(folder / "metadata.parquet")
    for modality in ("image", "text"):
        build_index(
            [folder / "vectors.npy"],
            folder / f"{modality}.index",
            folder / f"{modality}.infos.json",
            {
                "kind": "flat",
                "exact_below": 1000,
                "metric": "ip",
                "max_index_memory_usage": "1G",
                "max_index_query_time_ms": 10,
                "retrain_growth": 4,
                "max_train_vectors": 100_000,
            },
        )
        write_manifest([folder / "vectors.npy"], folder, folder / f"{modality}.vectors.json")
    write_metadata([folder / "metadata.parquet"], folder / "metadata.arrow", manifest)


class Server:
    def __init__(self, indices: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "clipflow.cli", "serve", "--indices", str(indices), "--port", str(self.port)]
        self.log = tempfile.NamedTemporaryFile(prefix="clipflow-serve-", suffix=".log")  # the server's log lines
        self.process = subprocess.Popen(
            [*command, "--max-num-images", "50", "--max-body-mb", "1", *options], stderr=self.log
        )
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, "the server exited"
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)

    def request(self, path: str, body=None, raw: bytes | None = None, content_type="application/json"):
        """(status, parsed JSON or bytes) of a GET, or of a POST of `body` as JSON (or `raw` bytes)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, payload, kind = response.status, response.read(), response.headers["Content-Type"]
        except urllib.error.HTTPError as error:
            status, payload, kind = error.code, error.read(), error.headers["Content-Type"]
        return status, json.loads(payload) if "json" in kind else payload

    def knn(self, **body):
        return self.request("/knn-service", body)

    def log_text(self) -> str:
        return Path(self.log.name).read_text()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def indices(tmp_path_factory):
    return build_index_folder(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        subprocess.run(["bash", str(REPO / "tests/browser/install.sh")], check=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield browser
        browser.close()
