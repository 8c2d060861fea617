import contextlib
import gzip
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from clipflow import shards

REPO = Path(__file__).resolve().parents[1]
SLOW_SECONDS = 4  # past the tests' download timeout


def jpeg(size=(320, 240), color=(200, 40, 40), quality=90, seed=None) -> bytes:
    """A solid image, or with a seed a noise texture tinted by `color` (distinct even to a random model)."""
    if seed is None:
        image = Image.new("RGB", size, color)
    else:
        noise = np.random.default_rng(seed).integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(((noise.astype(np.uint16) + color) // 2).astype(np.uint8)).resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def corrupt_scan_jpeg() -> bytes:
    """A JPEG whose headers and end marker are whole but whose entropy-coded scan has 1,000 of its own bytes
    spliced into its middle, as a botched copy or resumed transfer leaves it: Pillow and OpenCV decode it without
    an error, into garbage; libjpeg only warns of 1,045 extraneous bytes before the end marker."""
    body = jpeg(size=(320, 240), seed=11)
    scan = body.index(b"\xff\xda")
    middle = scan + (len(body) - scan) // 2
    return body[:middle] + body[scan + 20 : scan + 1020] + body[middle:]


def paced_jpeg() -> bytes:
    return jpeg(size=(1600, 1200), seed=3)


def rotated_jpeg() -> bytes:
    """A 320x240 JPEG stored with its top half red and bottom half blue, and EXIF orientation 6 (shown turned
    90 degrees clockwise: upright, 240x320, blue on the left and red on the right)."""
    image = Image.new("RGB", (320, 240), (220, 20, 20))
    image.paste((20, 20, 220), (0, 120, 320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def animated_gif() -> bytes:
    """Two frames: red, then blue."""
    frames = [Image.new("RGB", (64, 48), color) for color in ((220, 20, 20), (20, 20, 220))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


class PathologicalHandler(http.server.BaseHTTPRequestHandler):
    """Good images under /good/N.jpg, and every way a real image host misbehaves under other names."""

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _send(self, status, body, content_type="image/jpeg", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - the base class names it so
        path = self.path
        if path.startswith("/good/"):
            n = int(path.split("/")[-1].split(".")[0])
            self._send(200, jpeg(color=((n * 37) % 256, (n * 91) % 256, (n * 53) % 256), seed=n))
        elif path.startswith("/sized/"):  # /sized/WxH/N.jpg[?anything]: a distinct image of that size
            _, _, size, name = path.split("?")[0].split("/")
            width, height = map(int, size.split("x"))
            self._send(200, jpeg(size=(width, height), seed=int(name.split(".")[0])))
        elif path == "/error.jpg":
            self._send(500, b"internal error", "text/plain")
        elif path == "/slow.jpg":
            time.sleep(SLOW_SECONDS)
            self._send(200, jpeg())
        elif path == "/truncated.jpg":
            self._send(200, jpeg()[:300])
        elif path == "/page.jpg":
            self._send(200, b"<!doctype html><html><body>not an image</body></html>", "text/html")
        elif path == "/huge.jpg":
            self._send(200, jpeg(size=(6000, 4000), color=(10, 120, 200)))
        elif path == "/redirect.jpg":
            self.send_response(302)
            self.send_header("Location", "/good/7.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/noai.jpg":
            self._send(200, jpeg(), headers=[("X-Robots-Tag", "noai")])
        elif path == "/cut-scan.jpg":  # whole headers, then 60% of the entropy-coded scan
            body = jpeg(seed=9)
            self._send(200, body[: len(body) * 6 // 10])
        elif path == "/corrupt-scan.jpg":
            self._send(200, corrupt_scan_jpeg())
        elif path == "/short-length.jpg":  # a Content-Length below the real body's: the client reads half
            body = jpeg(seed=10)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body) // 2))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client stops reading at the Content-Length
                self.wfile.write(body)
        elif path == "/drip.jpg":  # a byte every 0.2 s: each read well within the timeout, the whole for ever
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for byte in jpeg()[:1000]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up
                pass
        elif path == "/rotated.jpg":
            self._send(200, rotated_jpeg())
        elif path == "/animated.gif":
            self._send(200, animated_gif(), "image/gif")
        elif path == "/gzip.jpg":
            self._send(200, gzip.compress(jpeg(seed=11)), headers=[("Content-Encoding", "gzip")])
        elif path == "/brotli.jpg":
            self._send(200, b"\x8b\x02\x80not really brotli", headers=[("Content-Encoding", "br")])
        elif path == "/paced.jpg":  # a 450 KB JPEG sent in 16 KB pieces a few ms apart, as a real host's arrive
            body = paced_jpeg()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), 2**14):
                self.wfile.write(body[start : start + 2**14])
                self.wfile.flush()
                time.sleep(0.003)
        elif path.startswith("/oversized"):  # 3 MB: with its Content-Length, or (-unannounced) without
            body = jpeg(size=(1600, 1200), seed=4, quality=100) * 3
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if path == "/oversized.jpg":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client stops reading at its limit
                self.wfile.write(body)
            self.close_connection = True
        elif path.startswith("/named/"):  # any name, percent-encoded by the client: a good image
            self._send(200, jpeg(seed=len(urllib.parse.unquote(path))))
        else:
            self._send(404, b"not found", "text/plain")


@pytest.fixture(scope="session")
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PathologicalHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the workflow in `workdir` with its config.yaml, as a user would from the command line."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", str(workdir / "config.yaml"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_shard(path, samples):
    """A complete shard as the download step leaves it (tar, parquet, stats with the tar's record) at `path`
    (NNNNNNNN.tar), from (key, image bytes, caption) samples."""
    path, tar_samples, rows = Path(path), [], []
    for key, image_bytes, caption in samples:
        meta = {"uid": f"u{key}", "url": f"http://x/{key}.jpg", "caption": caption, "key": key}
        tar_samples.append({"__key__": key, "jpg": image_bytes, "txt": caption, "json": json.dumps(meta)})
        rows.append({**meta, "status": "success", "error_message": None})
    rows = pd.DataFrame(rows, columns=["uid", "url", "caption", "key", "status", "error_message"])
    shards.write_shard(path.parent, path.stem, tar_samples, rows, {"count": len(rows), "successes": len(rows)})


def small_run_config(port: int) -> dict:
    """The tests' small demo run (.test/config/config.yaml), its image server on `port`."""
    config = yaml.safe_load((REPO / ".test/config/config.yaml").read_text())
    config["demo"]["port"] = port
    config["train"]["model_config"] = str(REPO / config["train"]["model_config"])
    return config


def write_precomputed_input(workdir: Path, name: str, first: int, vectors: np.ndarray) -> None:
    """data/<name>.parquet, rows numbered from `first`, and its embeddings beside it as DataComp lays them out
    (an .npz per parquet; arrays img and txt)."""
    numbers = range(first, first + len(vectors))
    metadata = pd.DataFrame(
        {"uid": [f"{n:032x}" for n in numbers], "url": [f"http://127.0.0.1:9/{n}.jpg" for n in numbers],
         "text": [f"caption {n}" for n in numbers]}
    )  # fmt: skip
    (workdir / "data").mkdir(exist_ok=True)
    metadata.to_parquet(workdir / f"data/{name}.parquet", index=False)
    np.savez(workdir / f"data/{name}.npz", img=vectors, txt=vectors)


def precomputed_config(**sections) -> dict:
    """A run over data/*.parquet with precomputed embeddings (nothing to download): shards of 250 rows, two a job."""
    return {
        "input": {"paths": ["data/*.parquet"], "caption_col": "text", "uid_col": "uid"},
        "plan": {"samples_per_shard": 250},
        "download": {"shards_per_job": 2},
        "embed": {
            "model": "ViT-S-32", "pretrained": "none", "shards_per_job": 2,
            "precomputed": {"image": "img", "text": "txt"},
        },
        **sections,
    }  # fmt: skip


def planned_jobs(output: str) -> list[str]:
    """The jobs a Snakemake dry run lists, as rule[wildcard value], sorted."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.M)
        if rule:
            wildcard = re.search(r"wildcards: \w+=([\w-]+)", block)
            jobs.append(rule.group(1) + (f"[{wildcard.group(1)}]" if wildcard else ""))
    return sorted(jobs)


@contextlib.contextmanager
def moto_s3(cache: Path, secret: str = "moto-secret"):
    """A moto S3 server on 127.0.0.1, this process's environment pointing at it (as a user's AWS_* variables
    would, so subprocesses inherit it) and clipflow's cache at `cache`; yields an s3fs file system on it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
    environment = {
        "AWS_ACCESS_KEY_ID": "clipflow-key",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "CLIPFLOW_CACHE": str(cache),
    }
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield s3fs.S3FileSystem()
    finally:
        server.terminate()
        server.wait(timeout=10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
