"""The workflow on a real SLURM cluster (tests/slurm/cluster.sh) through profiles/slurm.

GPU jobs ask SLURM for a GPU, a training job can span two nodes, a cancelled job is retried to the same results,
and deleting one shard submits only its jobs again. The dry run needs no cluster at all. Each level of the DAG costs ~20 s of
status checks here, so the tests after the first run redo as few levels as show what they test.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, free_port, small_run_config, write_config

CLUSTER_SCRIPT = REPO / "tests/slurm/cluster.sh"
DEMO_PORT = free_port()
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/logs/slurm/rule_(\w+)/(?:(\w+)/)?\d+\.log\)")
SUBMITTED_ARRAY = re.compile(r"Submitted array job with Snakemake IDs \S+ and SLURM job ID (\d+)\.")


CURATION_JOBS = [  # the demo config's curation, on CPU nodes
    "curate_filter[basic]",
    "curate_filter[clip_top_half]",
    "curate_filter[near_duplicates]",
    "curate_filter[round_shapes]",
    "curate_pool",
    "near_duplicate_centroids[near_duplicates]",
    "near_duplicate_assign[near_duplicates_00000000]",
    "near_duplicate_pairs[near_duplicates_0]",
    "near_duplicate_pairs[near_duplicates_1]",
    "near_duplicate_decide[near_duplicates]",
    "curate_subset[clip_basic_dedup]",
    "curate_subset[round_shapes]",
    "reshard[clip_basic_dedup]",
    "held_out_rows",
    "holdout_dataset",
]
GPU_JOBS = ("embed_chunk", "train", "evaluate")  # the profile's embed_chunk: gpu, the train and evaluate rules' own


def snakemake_on_slurm(workdir: Path, *args: str, env=None, background=False):
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", str(workdir / "config.yaml"), "--profile", str(REPO / "profiles/slurm"), *args]
    # The plugin checks after this many seconds, then 10 s later each time nothing finished; the test jobs take
    # 10-20 s, so one check at 20 s catches most of them (the profile's 10 s would need two, at 10 and 30 s).
    command += ["--slurm-init-seconds-before-status-checks", "20"]
    # The slurm plugin reads $USER to guess an account; a login shell has it, CI may not.
    env = {**os.environ, "USER": os.environ.get("USER", "root"), **(env or {})}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, env=env)


def write_demo_config(workdir: Path) -> None:
    write_config(workdir, small_run_config(DEMO_PORT))


def submitted_jobs(output: str, workdir: Path) -> dict[str, str]:
    """SLURM job id (<array>_<task> for an array's tasks) -> rule[wildcards], from what snakemake printed and,
    for job arrays, whose line names neither, from each task's log."""
    jobs = {
        job_id: rule + (f"[{wildcards}]" if wildcards else "") for job_id, rule, wildcards in SUBMITTED.findall(output)
    }
    for array_id in SUBMITTED_ARRAY.findall(output):
        for log in (workdir / "logs/slurm").glob(f"rule_*/{array_id}_*.log"):
            # the task's own job, after the array's first job that the log shows first
            values = re.search(r"wildcards: (.+)", log.read_text().split("localrule ", 1)[1]).group(1).split(", ")
            wildcards = "_".join(value.split("=", 1)[1] for value in values)  # as the plugin names log folders
            jobs[log.stem] = f"{log.parent.name.removeprefix('rule_')}[{wildcards}]"
    return jobs


def cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    nodes = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%t"], capture_output=True, text=True).stdout
    return nodes.split() == ["idle", "idle"]  # both of cluster.sh's nodes


@pytest.fixture(scope="module")
def cluster():
    """The test cluster: used if it is already up, else started here (as root) and stopped afterwards."""
    if cluster_is_up():
        yield
        return
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], check=True)
    yield
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], check=True)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    write_demo_config(workdir)
    result = snakemake_on_slurm(workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return workdir, output


def test_workflow_runs_through_slurm(slurm_run):
    workdir, output = slurm_run
    submitted = submitted_jobs(output, workdir)
    jobs = sorted(submitted.values())
    assert jobs == sorted(
        [
            "index_train[image]",
            "index_train[text]",
            "index_add[image_00000000]",
            "index_add[text_00000000]",
            "index_merge[image]",
            "index_merge[text]",
            "index_vectors[image]",
            "index_vectors[text]",
            "download_batch[00000000]",
            "download_batch[00000001]",
            "embed_chunk[00000000]",
            "index_metadata",
            "render_demo_images",
            "summarize_downloads",
            "summarize_embeddings",
            *CURATION_JOBS,
            "train[clip_basic_dedup]",
            "evaluate[clip_basic_dedup]",
        ]
    )
    # The profile submits download batches as one job array (embeddings too, where a wave holds more than one)
    downloads = [job_id for job_id, job in submitted.items() if job.startswith("download_batch")]
    assert len({job_id.split("_")[0] for job_id in downloads}) == 1 and all("_" in job_id for job_id in downloads)
    summary = yaml.safe_load((workdir / "results/summary/download.json").read_text())
    assert summary["input_rows"] == 42 and summary["downloaded"] > 30
    assert (workdir / "results/index/image.index").stat().st_size > 0
    logs = list((workdir / "logs/slurm/rule_embed_chunk/00000000").glob("*.log"))
    assert logs and "embed_chunk" in logs[0].read_text()


def test_only_embedding_training_and_evaluation_jobs_ask_for_a_gpu(slurm_run):
    workdir, output = slurm_run
    for job_id, job in submitted_jobs(output, workdir).items():
        record = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
        asks_gpu = re.search(r"Tres\w*=\S*gpu", record) is not None
        assert asks_gpu == job.startswith(GPU_JOBS), f"{job} (SLURM job {job_id}):\n{record}"


def test_a_training_job_spans_two_nodes(slurm_run):
    """train.nodes: 2 is one SLURM job on two nodes (the test cluster's partition multi): srun starts a torchrun on
    each, they meet in a c10d rendezvous on the first, and open_clip trains with the global batch split over both."""
    workdir, _ = slurm_run
    config_path = workdir / "config.yaml"
    single_node = config_path.read_text()
    config = yaml.safe_load(single_node)
    write_config(workdir, {**config, "train": {**config["train"], "nodes": 2}})
    shutil.rmtree(workdir / "results/train/clip_basic_dedup/run")  # trained from its first step on both nodes
    try:
        assert "Nothing to be done" in snakemake_on_slurm(workdir, "--dry-run").stdout  # nodes only sizes the job
        result = snakemake_on_slurm(
            workdir, "--forcerun", "train", "--until", "train", "--set-resources", "train:slurm_partition=multi"
        )
    finally:
        config_path.write_text(single_node)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    (job_id,) = [job for job, name in submitted_jobs(output, workdir).items() if name.startswith("train")]
    record = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    assert re.search(r"NumNodes=2 ", record) and re.search(r"NumTasks=2 ", record), record
    log = (workdir / "logs/train/clip_basic_dedup.log").read_text()
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in log and "--nnodes=2" in log
    ranks = set(re.findall(r"Process \(global: (\d), local \d\), total 2", log))
    assert ranks == {"0", "1"}, log[-3000:]  # each node's trainer, one world of two
    provenance = json.loads((workdir / "results/train/clip_basic_dedup/provenance.json").read_text())
    assert (provenance["nodes"], provenance["processes"]) == (2, 2)
    assert dict(zip(provenance["open_clip_train_args"], provenance["open_clip_train_args"][1:]))["--batch-size"] == "4"


def embeddings(workdir: Path) -> dict:
    folder = workdir / "results/embeddings"
    return {
        "metadata": pd.concat(pd.read_parquet(p) for p in sorted((folder / "metadata").glob("*.parquet"))),
        **{
            kind: np.concatenate([np.load(p) for p in sorted((folder / kind).glob("*.npy"))])
            for kind in ("image", "text")
        },
    }


def test_cancelled_job_is_retried_to_the_same_results(slurm_run, tmp_path):
    clean_workdir, _ = slurm_run
    workdir = tmp_path / "copy"
    shutil.copytree(clean_workdir, workdir)  # the finished run, its embeddings gone: only embed_chunk runs
    shutil.rmtree(workdir / "results/embeddings")
    run = snakemake_on_slurm(workdir, "results/embeddings/info/00000000.json", background=True)
    deadline, cancelled = time.monotonic() + 300, None
    while cancelled is None and run.poll() is None and time.monotonic() < deadline:
        running = subprocess.run(
            ["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], capture_output=True, text=True
        ).stdout
        embedding = [line.split()[0] for line in running.splitlines() if "rule_embed_chunk" in line]
        if embedding:
            time.sleep(2)  # mid-job: the model is loading or embedding
            subprocess.run(["scancel", embedding[0]], check=True)
            cancelled = embedding[0]
        time.sleep(0.5)
    output, _ = run.communicate(timeout=600)
    assert cancelled, "no embedding job was seen running"
    assert run.returncode == 0, output[-5000:]
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in output
    assert list(submitted_jobs(output, workdir).values()) == ["embed_chunk[00000000]"] * 2  # the job and its retry
    status = [sys.executable, "-m", "clipflow.cli", "status", "--json"]
    status = subprocess.run(status, cwd=workdir, capture_output=True)
    assert status.returncode == 0 and json.loads(status.stdout)["failed_jobs"] == []  # retried, not failed

    clean, retried = embeddings(clean_workdir), embeddings(workdir)
    pd.testing.assert_frame_equal(clean["metadata"], retried["metadata"])
    np.testing.assert_array_equal(clean["image"], retried["image"])
    np.testing.assert_array_equal(clean["text"], retried["text"])


def test_deleted_shard_submits_only_its_jobs(slurm_run):
    workdir, _ = slurm_run
    shards = workdir / "results/shards"
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("00000000*")}
    (shards / "00000001.tar").unlink()
    # Up to the indices: the curation after them would add four levels of jobs to wait for, and nothing to learn.
    result = snakemake_on_slurm(workdir, "--until", "index_merge", "index_metadata", "summarize_downloads")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert sorted(submitted_jobs(output, workdir).values()) == [  # the one chunk is also what the index trains on
        "download_batch[00000001]",
        "embed_chunk[00000000]",
        "index_add[image_00000000]",
        "index_add[text_00000000]",
        "index_merge[image]",
        "index_merge[text]",
        "index_metadata",
        "index_train[image]",
        "index_train[text]",
        "summarize_downloads",
    ]
    assert (shards / "00000001.tar").exists()
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("00000000*")} == kept


def test_dry_run_needs_no_cluster(tmp_path):
    write_demo_config(tmp_path)
    result = snakemake_on_slurm(tmp_path, "--dry-run", env={"SLURM_CONF": str(tmp_path / "no-cluster.conf")})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "download_batch" in output and "embed_chunk" in output
