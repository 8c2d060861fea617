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
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

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
    """A webdataset shard as img2dataset writes it, from (key, image bytes, caption) samples."""
    with wds.TarWriter(str(path)) as sink:
        for key, image_bytes, caption in samples:
            meta = {"uid": f"u{key}", "url": f"http://x/{key}.jpg", "caption": caption, "key": key}
            sink.write({"__key__": key, "jpg": image_bytes, "txt": caption, "json": json.dumps(meta)})


def small_run_config(port: int) -> dict:
    """The tests' small demo run (.test/config/config.yaml), its image server on `port`."""
    config = yaml.safe_load((REPO / ".test/config/config.yaml").read_text())
    config["demo"]["port"] = port
    return config


def planned_jobs(output: str) -> list[str]:
    """The jobs a Snakemake dry run lists, as rule[wildcard value], sorted."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.M)
        if rule:
            wildcard = re.search(r"wildcards: \w+=([\w-]+)", block)
            jobs.append(rule.group(1) + (f"[{wildcard.group(1)}]" if wildcard else ""))
    return sorted(jobs)
