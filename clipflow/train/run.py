"""One training run: open_clip_train's arguments from DataComp-style hyperparameters, a resumable run folder, the
final checkpoint and its provenance.

The run folder keeps open_clip's checkpoints between attempts: a job that is killed or times out resumes from the
last one (open_clip's --resume latest with --save-most-recent), unless what it trains on or with has changed, when
it starts over.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from clipflow import files
from clipflow.errors import ClipflowError

RUN_NAME = "open_clip"  # open_clip_train's --name: its folder inside the run folder
SETTINGS_FILE = "settings.json"


def processes(gpus: int) -> int:
    """One process per GPU that the job has (at most `gpus`); one on a machine without CUDA."""
    return max(1, min(gpus, torch.cuda.device_count()))


def train_data(shard_paths: list[Path]) -> str:
    """The shards in open_clip's brace notation (reshard numbers its shards from 00000000 up)."""
    folder, names = shard_paths[0].parent, [path.stem for path in shard_paths]
    if len(names) == 1:
        return str(shard_paths[0])
    return f"{folder}/{{{names[0]}..{names[-1]}}}.tar"


def open_clip_args(hyper: dict, shard_paths: list[Path], run_folder: Path, processes: int, workers: int) -> list:
    """open_clip_train's command line as DataComp's train.py builds it: samples_seen in `checkpoints` epochs of
    resampled shards, the global batch split over the processes (of every node)."""
    if hyper["batch_size"] % processes:
        raise ClipflowError(f"train.batch_size ({hyper['batch_size']}) must be a multiple of the {processes} GPUs")
    args = [
        "--train-data", train_data(shard_paths),
        "--dataset-type", "webdataset",
        "--dataset-resampled",
        "--train-num-samples", str(hyper["samples_seen"] // hyper["checkpoints"]),
        "--epochs", str(hyper["checkpoints"]),
        "--model", hyper["model"],
        "--batch-size", str(hyper["batch_size"] // processes),
        "--lr", str(hyper["lr"]),
        "--wd", str(hyper["wd"]),
        "--warmup", str(hyper["warmup"]),
        "--precision", hyper["precision"],
        "--seed", str(hyper["seed"]),
        "--workers", str(workers),
        "--logs", str(run_folder),
        "--name", RUN_NAME,
        "--save-frequency", "0",
        "--save-most-recent",
        "--resume", "latest",
        "--ddp-static-graph", "--local-loss", "--gather-with-grad", "--grad-checkpointing",
        "--log-every-n-steps", "10",
    ]  # fmt: skip
    if hyper["beta2"] is not None:
        args += ["--beta2", str(hyper["beta2"])]
    return args


LAUNCH_MODULE = "clipflow.launch"
RENDEZVOUS_PORT = 29400  # torchrun's own default for c10d


def launcher(tool: str, model_config: str | None) -> list[str]:
    """python's arguments that run `tool` (train or benchmark) through clipflow.launch."""
    return ["-m", LAUNCH_MODULE, *_tool_args(tool, model_config)]


def _tool_args(tool: str, model_config: str | None) -> list[str]:
    return [tool, *(["--model-config", model_config] if model_config else [])]


def command(hyper: dict, args: list[str], processes: int, nodes: int = 1) -> list[str]:
    """The training command: open_clip_train itself, torchrun on one node, or on `nodes` nodes srun's torchruns
    (one a node, `processes` workers each), which meet in a c10d rendezvous on the allocation's first node."""
    if nodes == 1 and processes == 1:
        return [sys.executable, *launcher("train", hyper["model_config"]), *args]
    # "--" ends torchrun's own options: its parser (argparse, Python 3.11) would take open_clip's --logs for an
    # ambiguous abbreviation of its --logs-specs and stop.
    script = ["-m", "--", LAUNCH_MODULE, *_tool_args("train", hyper["model_config"]), *args]
    if nodes == 1:
        distributed = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        return [sys.executable, *distributed, *script]
    job, head = slurm_allocation(nodes)
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    distributed = ["-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={processes}"]
    distributed += ["--rdzv_backend=c10d", f"--rdzv_endpoint={head}:{RENDEZVOUS_PORT}", f"--rdzv_id={job}"]
    return [*srun, sys.executable, *distributed, *script]



def slurm_allocation(nodes: int) -> tuple[str, str]:
    """(job id, first node's host name) of the SLURM allocation this job runs in, which must hold `nodes` nodes."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        raise ClipflowError(
            f"train.nodes is {nodes}: a training job spans several nodes only as a SLURM job of as many "
            "(snakemake --profile profiles/slurm); without SLURM, set train.nodes: 1"
        )
    # Snakemake's job step keeps only the job's id of SLURM's variables: ask SLURM for the job's nodes.
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or _output(["squeue", "-h", "-j", job, "-o", "%N"])
    hosts = _output(["scontrol", "show", "hostnames", nodelist]).split()
    if len(hosts) != nodes:
        raise ClipflowError(f"SLURM job {job} holds {len(hosts)} nodes ({nodelist}), not train.nodes = {nodes}")
    return job, hosts[0]


def _output(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def latest_checkpoint(run_folder: Path) -> Path:
    return run_folder / RUN_NAME / "checkpoints" / "epoch_latest.pt"


def start_or_resume(run_folder: Path, settings: dict) -> bool:
    """Keep the run folder's checkpoints if they were made with `settings`; True when there is one to resume."""
    recorded = run_folder / SETTINGS_FILE
    if recorded.exists() and json.loads(recorded.read_text()) != settings:
        print(f"training settings or data changed since {run_folder} was started: starting over", flush=True)
        shutil.rmtree(run_folder)
    run_folder.mkdir(parents=True, exist_ok=True)
    files.write_json(recorded, settings)
    return latest_checkpoint(run_folder).exists()


def match_checkpoint(run_folder: Path, processes: int) -> None:
    """open_clip resumes on several processes only a checkpoint saved by several (state_dict keys "module.*"; on
    one it strips them itself): a run that resumes on more processes than it was started with, the GPUs and nodes
    being sizing settings, gets the prefix added to its last checkpoint."""
    path = latest_checkpoint(run_folder)
    if processes == 1 or not path.exists():
        return
    # Mapped, not read: a run resumed on as many processes as before (the usual case) only has its keys looked at.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if next(iter(checkpoint["state_dict"])).startswith("module."):
        return
    checkpoint["state_dict"] = {f"module.{key}": value for key, value in checkpoint["state_dict"].items()}
    with files.replacing(path) as tmp:
        torch.save(checkpoint, tmp)


def train(hyper: dict, shard_paths: list[Path], run_folder: Path, gpus: int, workers: int, nodes: int = 1) -> dict:
    """Train (or resume) in `run_folder` with `gpus` on each of `nodes`; returns the run's provenance, its final
    checkpoint at latest_checkpoint(run_folder)."""
    data = {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in shard_paths}
    resuming = start_or_resume(run_folder, {"hyperparameters": hyper, "shards": data})
    used = processes(gpus)
    match_checkpoint(run_folder, nodes * used)
    args = open_clip_args(hyper, shard_paths, run_folder, nodes * used, workers)
    started = time.time()
    launch = command(hyper, args, used, nodes)
    print(("resuming: " if resuming else "training: ") + " ".join(launch), flush=True)
    result = subprocess.run(launch, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise ClipflowError(f"open_clip_train exited with {result.returncode}: see its output above")
    checkpoint = latest_checkpoint(run_folder)
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]
    if epoch != hyper["checkpoints"]:
        raise ClipflowError(f"{checkpoint} ends epoch {epoch}, not {hyper['checkpoints']}: training stopped early")
    return {
        "hyperparameters": hyper,
        "open_clip_train_args": args,
        "processes": nodes * used,
        "nodes": nodes,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "resumed": resuming,
        "seconds_this_attempt": round(time.time() - started, 1),
        "versions": {
            "python": platform.python_version(),
            **{name: version(name) for name in ("clipflow", "open_clip_torch", "torch", "webdataset")},
        },
    }
