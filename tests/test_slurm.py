"""The SLURM profile: planning works with no cluster reachable (end-to-end cluster tests: issue 4, in progress)."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO
from test_demo import free_port



def snakemake_on_slurm(workdir: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", str(workdir / "config.yaml"), "--profile", str(REPO / "profiles/slurm"), *args]
    # The slurm plugin (2.0.3) reads $USER to guess an account; a login shell has it, CI may not.
    env = {**os.environ, "USER": os.environ.get("USER", "root"), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=env)


def write_demo_config(workdir: Path) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["demo"].update(images=40, port=free_port())
    config["plan"]["samples_per_shard"] = 20
    config["embed"].update(model="ViT-S-32", batch_size=16, workers=1, shards_per_job=2)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_dry_run_needs_no_cluster(tmp_path):
    write_demo_config(tmp_path)
    result = snakemake_on_slurm(tmp_path, "--dry-run", env={"SLURM_CONF": str(tmp_path / "no-cluster.conf")})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "download_shard" in output and "embed_chunk" in output
