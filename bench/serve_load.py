"""Load on `clipflow serve`: queries/s and p50/p99 latency for text and embedding queries.

Starts the server on 127.0.0.1 over two indices: the demo index the workflow wrote (`results/index`,
ViT-B-32, so a ViT-B-32-sized text tower encodes the text queries) and a synthetic index of
`--vectors` clustered embeddings (of the demo model's width) built by the workflow's own index builder (autofaiss above
`exact_below`). Then `--clients` concurrent clients send queries for `--seconds` each round. Client
and server share this machine's cores, so the figures are a lower bound for the server alone.

    python bench/serve_load.py --vectors 1000000
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd

from clipflow.config import load_config, output_settings
from clipflow.index.builder import build_index
from clipflow.index.folder import write_metadata

REPO = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/json"}
WORDS = "red green blue small large old new bright dark striped dotted round square".split()
THINGS = "dog cat car house tree circle star boat bird flower street field".split()


def model_width(manifest: Path) -> int:
    import open_clip

    return open_clip.get_model_config(json.loads(manifest.read_text())["model"])["embed_dim"]


def synthetic_index(folder: Path, count: int, manifest: Path, memory: str) -> None:
    """`count` unit vectors around 1,000 centres (real embeddings cluster; uniform noise would not)."""
    width = model_width(manifest)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "image.index").exists():
        return
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, width)).astype(np.float32)
    vectors = np.empty((count, width), np.float16)
    for start in range(0, count, 100_000):
        size = min(100_000, count - start)
        part = centres[rng.integers(0, 1000, size)] + 0.6 * rng.standard_normal((size, width)).astype(np.float32)
        vectors[start : start + size] = part / np.linalg.norm(part, axis=1, keepdims=True)
    np.save(folder / "vectors.npy", vectors)
    ids = np.arange(count).astype(str).astype(object)
    pd.DataFrame({"url": "https://images.example.com/" + ids + ".jpg", "caption": "synthetic " + ids}).to_parquet(
        folder / "metadata.parquet"
    )
    config = folder / "config.yaml"
    config.write_text(json.dumps({"input": {"paths": ["unused"]}, "index": {"max_index_memory_usage": memory}}))
    options = output_settings(load_config(config), "index")  # the workflow's defaults
    started = time.perf_counter()
    build_index([folder / "vectors.npy"], folder / "image.index", folder / "image.infos.json", options)
    print(f"built the {count:,}-vector index in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    shutil.copyfile(folder / "image.index", folder / "text.index")
    write_metadata([folder / "metadata.parquet"], folder / "metadata.arrow", manifest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_counters(url: str) -> dict[str, float]:
    """The server's clipflow_batch_{calls,queries}_total counters, by stage."""
    import urllib.request

    counters = {}
    for line in urllib.request.urlopen(url + "/metrics").read().decode().splitlines():
        if line.startswith(("clipflow_batch_calls_total", "clipflow_batch_queries_total")):
            name, value = line.rsplit(" ", 1)
            counters[name] = float(value)
    return counters


def mean_batch(before: dict, after: dict, stage: str) -> float:
    calls = after.get(f'clipflow_batch_calls_total{{stage="{stage}"}}', 0) - before.get(
        f'clipflow_batch_calls_total{{stage="{stage}"}}', 0
    )
    queries = after.get(f'clipflow_batch_queries_total{{stage="{stage}"}}', 0) - before.get(
        f'clipflow_batch_queries_total{{stage="{stage}"}}', 0
    )
    return queries / calls if calls else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(url: str, make_body, clients: int, seconds: float) -> dict:
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(session, number):
        nonlocal errors
        sent = 0
        while time.perf_counter() < deadline:
            body = make_body(number, sent)
            started = time.perf_counter()
            async with session.post(url + "/knn-service", data=body, headers=JSON) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)
            sent += 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    milliseconds = np.array(latencies) * 1000
    return {
        "queries": len(latencies),
        "errors": errors,
        "qps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
    }


def text_body(index: str, clients: int):
    def body(client: int, sent: int) -> bytes:  # every query distinct: the server's text cache never hits
        words = f"{WORDS[(client + sent) % len(WORDS)]} {THINGS[(client * 7 + sent) % len(THINGS)]}"
        text = f"a photo of a {words} number {index}-{clients}-{client}-{sent}"
        return json.dumps({"text": text, "modality": "image", "num_images": 10, "indice_name": index}).encode()

    return body


def embedding_body(index: str, dim: int):
    """Prepared bodies, so that the client spends its CPU on sending, not on JSON."""
    vectors = np.random.default_rng(1).standard_normal((4096, dim)).astype(np.float32).round(4).tolist()
    bodies = [
        json.dumps({"embedding_input": v, "modality": "image", "num_images": 10, "indice_name": index}).encode()
        for v in vectors
    ]

    def body(client: int, sent: int) -> bytes:
        return bodies[(client * 131 + sent) % len(bodies)]

    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-index", default=str(REPO / "results/index"))
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--index-memory", default="1G", help="autofaiss memory budget for the synthetic index")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "clipflow-serve-load"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--precision", default="auto", help="the server's --precision")
    parser.add_argument(
        "--search-params", help="faiss search parameters for the synthetic index, e.g. nprobe=64,efSearch=128"
    )
    args = parser.parse_args()

    demo = Path(args.demo_index).resolve()  # indices.json names folders relative to itself
    if not (demo / "model.json").exists():
        raise SystemExit(f"{demo}: no index; run the demo workflow first (see README)")
    synthetic = Path(args.cache) / f"synthetic-{args.vectors}-{model_width(demo / 'model.json')}"
    synthetic_index(synthetic, args.vectors, demo / "model.json", args.index_memory)
    indices = Path(args.cache) / "indices.json"
    synthetic_entry = {"index": str(synthetic), **({"search_params": args.search_params} if args.search_params else {})}
    indices.write_text(json.dumps({"demo": {"index": str(demo)}, "synthetic": synthetic_entry}))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "clipflow.cli", "serve", "--indices", str(indices), "--port", str(port)]
        + ["--precision", args.precision],
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.perf_counter()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 300:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
        print(f"server up in {time.perf_counter() - started:.1f} s")
        infos = json.loads((synthetic / "image.infos.json").read_text())
        print(
            f"synthetic index: {args.vectors:,} vectors, {infos.get('index_key', infos.get('kind'))}, search params {args.search_params or infos.get('index_param')}"
        )
        print(
            f"{'index':>10} {'query':>9} {'clients':>7} {'queries':>8} {'q/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'errors':>6} {'server CPU ms/query':>19} {'mean batch':>10}"
        )
        for index in ("demo", "synthetic"):
            for kind in ("text", "embedding"):
                for clients in args.clients:
                    make_body = text_body(index, clients) if kind == "text" else embedding_body(index, model_width(demo / "model.json"))
                    cpu_before, counters_before = cpu_seconds(server.pid), batch_counters(url)
                    row = asyncio.run(drive(url, make_body, clients, args.seconds))
                    cpu_ms = (cpu_seconds(server.pid) - cpu_before) * 1000 / max(row["queries"], 1)
                    stage = "encode_text" if kind == "text" else f"search_{index}_image"
                    batch = mean_batch(counters_before, batch_counters(url), stage)
                    print(
                        f"{index:>10} {kind:>9} {clients:>7} {row['queries']:>8} {row['qps']:>8.0f} "
                        f"{row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} {row['errors']:>6} {cpu_ms:>19.2f} {batch:>10.1f}",
                        flush=True,
                    )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
