import os
import socket
import subprocess
import sys
import time

from snakemake.exceptions import WorkflowError

from clipflow import demo
from clipflow.errors import ClipflowError
from clipflow.planner import load_plan, make_plan

PLAN_DIR = "results/plan"
SHARDS_DIR = "results/shards"
DEMO_DIR = "results/demo"
EMBEDDINGS_DIR = "results/embeddings"
INDEX_DIR = "results/index"
MODEL_MANIFEST = "results/model.json"
EMBEDDING_SUFFIXES = {"image": "npy", "text": "npy", "metadata": "parquet", "info": "json"}


wildcard_constraints:
    shard=r"\d{8}",
    chunk=r"\d{8}",
    modality="image|text",


def current_plan():
    """The shard plan, brought up to date by the main process only; jobs read what it decided."""
    try:
        if not workflow.is_main_process:
            return load_plan(PLAN_DIR)
        if config["demo"]["enabled"]:
            demo.write_metadata(
                f"{DEMO_DIR}/metadata.csv", config["demo"]["images"], config["demo"]["port"]
            )
        return make_plan(config, PLAN_DIR)
    except ClipflowError as error:
        raise WorkflowError(str(error)) from None


PLAN = current_plan()
# Embedding jobs take consecutive shards, named after the first: the model loads once per chunk.
CHUNKS = {
    PLAN.shards[i]: PLAN.shards[i : i + config["embed"]["shards_per_job"]]
    for i in range(0, len(PLAN.shards), config["embed"]["shards_per_job"])
}


def demo_images(wildcards):
    return [f"{DEMO_DIR}/site/images"] if config["demo"]["enabled"] else []


def start_demo_server():
    """Serve the demo images while the workflow runs; the server exits with this process."""
    port = config["demo"]["port"]
    os.makedirs(f"{DEMO_DIR}/site", exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "clipflow.cli", "demo-serve", "--folder", f"{DEMO_DIR}/site"]
        + ["--port", str(port), "--parent-pid", str(os.getpid())]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise WorkflowError(
                f"demo server could not start on 127.0.0.1:{port} (in use?); set demo.port"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise WorkflowError(f"demo server did not answer on 127.0.0.1:{port} within 30 s")


def stop_demo_server(servers):
    for server in servers:
        server.terminate()
        server.wait(timeout=10)


def downloaded_shards(suffix):
    return expand(f"{SHARDS_DIR}/{{shard}}{suffix}", shard=PLAN.shards)


def chunk_tars(wildcards):
    return [f"{SHARDS_DIR}/{shard}.tar" for shard in CHUNKS[wildcards.chunk]]


def chunk_outputs(kind):
    return expand(f"{EMBEDDINGS_DIR}/{kind}/{{chunk}}.{EMBEDDING_SUFFIXES[kind]}", chunk=CHUNKS)


def get_final_outputs():
    # Shards and embeddings are products in their own right: asking for them makes a deleted one come back.
    shards = [downloaded_shards(suffix) for suffix in (".tar", ".parquet", "_stats.json")]
    embeddings = [chunk_outputs(kind) for kind in EMBEDDING_SUFFIXES]
    index = expand(
        f"{INDEX_DIR}/{{name}}", name=["image.index", "text.index", "metadata.arrow", "model.json"]
    )
    summaries = expand(
        "results/summary/{name}", name=["download.json", "download.png", "embeddings.json"]
    )
    return [*sum(shards, []), *sum(embeddings, []), *index, *summaries]
