import os
import socket
import subprocess
import sys
import time

from snakemake.exceptions import WorkflowError

from clipflow import demo
from clipflow.errors import ClipflowError
from clipflow.planner import SHARD_FILE_SUFFIXES, load_plan, make_plan

PLAN_DIR = "results/plan"
SHARDS_DIR = "results/shards"
DEMO_DIR = "results/demo"
EMBEDDINGS_DIR = "results/embeddings"
INDEX_DIR = "results/index"
MODEL_MANIFEST = "results/model.json"
CURATE_DIR = "results/curate"
SUBSETS_DIR = f"{CURATE_DIR}/subsets"
EMBEDDING_SUFFIXES = {"image": "npy", "text": "npy", "metadata": "parquet", "info": "json"}


wildcard_constraints:
    batch=r"\d{8}",
    chunk=r"\d{8}",
    modality="image|text",
    filter=r"[A-Za-z0-9_-]+",
    subset=r"[A-Za-z0-9_-]+",


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


def consecutive(shards, size):
    """Jobs over `size` consecutive shards, each named after its first shard."""
    return {shards[i]: shards[i : i + size] for i in range(0, len(shards), size)}


def check_job_sizes():
    per_download, per_embed = (config[step]["shards_per_job"] for step in ("download", "embed"))
    if per_embed % per_download:
        raise WorkflowError(
            f"embed.shards_per_job ({per_embed}) must be a multiple of download.shards_per_job "
            f"({per_download}): an embedding job takes whole download batches"
        )


def reopen_incomplete_batches():
    """A batch record whose shard files are gone (deleted, or lost) no longer holds: remove it, so the
    batch runs again and downloads just those shards."""
    if not workflow.is_main_process or not os.path.isdir(f"{SHARDS_DIR}/batches"):
        return
    present = set(os.listdir(SHARDS_DIR))
    for batch, shards in BATCHES.items():
        record = f"{SHARDS_DIR}/batches/{batch}.json"
        missing = [
            shard + suffix
            for shard in shards
            for suffix in SHARD_FILE_SUFFIXES
            if shard + suffix not in present
        ]
        if missing and os.path.exists(record):
            print(
                f"clipflow: {missing} missing, download batch {batch} runs again", file=sys.stderr
            )
            os.remove(record)


PLAN = current_plan()
check_job_sizes()
# Downloads and embeddings run a job per batch or chunk of consecutive shards: the DAG stays small
# at scale, and an embedding job loads the model once for many shards.
BATCHES = consecutive(PLAN.shards, config["download"]["shards_per_job"])
CHUNKS = consecutive(PLAN.shards, config["embed"]["shards_per_job"])
reopen_incomplete_batches()


def check_subsets():
    filters = config["curate"]["filters"]
    for subset, spec in config["curate"]["subsets"].items():
        unknown = [name for name in spec["filters"] if name not in filters]
        if unknown:
            raise WorkflowError(
                f"curate.subsets.{subset}.filters names {unknown}, not in curate.filters "
                f"({sorted(filters)})"
            )


check_subsets()


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


def batch_plan_shards(wildcards):
    return [f"{PLAN_DIR}/shards/{shard}.parquet" for shard in BATCHES[wildcards.batch]]


def batch_records(batches):
    return expand(f"{SHARDS_DIR}/batches/{{batch}}.json", batch=batches)


def chunk_batch_records(wildcards):
    shards = CHUNKS[wildcards.chunk]
    return batch_records(shards[:: config["download"]["shards_per_job"]])


def chunk_tars(wildcards):
    return [f"{SHARDS_DIR}/{shard}.tar" for shard in CHUNKS[wildcards.chunk]]


def chunk_outputs(kind):
    return expand(f"{EMBEDDINGS_DIR}/{kind}/{{chunk}}.{EMBEDDING_SUFFIXES[kind]}", chunk=CHUNKS)


def filter_embeddings(wildcards):
    options = config["curate"]["filters"][wildcards.filter]
    return chunk_outputs(options["modality"]) if options["kind"] == "semantic_dedup" else []


def subset_filter_outputs(wildcards, extension):
    names = config["curate"]["subsets"][wildcards.subset]["filters"]
    return expand(f"{CURATE_DIR}/filters/{{name}}.{extension}", name=names)


def curation_outputs():
    subsets = config["curate"]["subsets"]
    files = expand(
        f"{SUBSETS_DIR}/{{subset}}/{{name}}",
        subset=subsets,
        name=["uids.npy", "kept.parquet", "summary.json"],
    )
    resharded = [name for name, spec in subsets.items() if spec["reshard"]]
    return files + expand(f"{SUBSETS_DIR}/{{subset}}/shards/reshard.json", subset=resharded)


def get_final_outputs():
    # Batch records and embeddings are asked for directly: Snakemake 9 does not rebuild a deleted
    # intermediate whose consumers are up to date.
    embeddings = [chunk_outputs(kind) for kind in EMBEDDING_SUFFIXES]
    index = expand(
        f"{INDEX_DIR}/{{name}}", name=["image.index", "text.index", "metadata.arrow", "model.json"]
    )
    summaries = expand(
        "results/summary/{name}", name=["download.json", "download.png", "embeddings.json"]
    )
    return [
        *batch_records(BATCHES),
        *sum(embeddings, []),
        *index,
        *summaries,
        *curation_outputs(),
    ]
