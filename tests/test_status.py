"""`clipflow status` reads Snakemake's own log: the steps done and each failed job with its log."""

import subprocess
import sys

from clipflow.status import _snakemake

FAILING = """
rule all:
    input: expand("out/{x}.txt", x=["a", "b", "c"])

rule make:
    output: "out/{x}.txt"
    log: "logs/make/{x}.log"
    shell: "if [ {wildcards.x} = b ]; then echo boom > {log}; exit 1; fi; touch {output}"
"""


def test_a_failed_job_is_named_with_its_log(tmp_path):
    (tmp_path / "Snakefile").write_text(FAILING)
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--keep-going", "-d", str(tmp_path)]
    result = subprocess.run([*command, "-s", str(tmp_path / "Snakefile")], capture_output=True, text=True)
    assert result.returncode != 0
    found = _snakemake(tmp_path)
    assert found["failed_jobs"] == [{"rule": "make", "log": "logs/make/b.log", "slurm_log": None}]
    assert found["steps"] == [2, 4] and not found["running"]


FLAKY = """
rule flaky:
    output: "out.txt"
    log: "logs/flaky.log"
    shell: "if [ ! -e tried ]; then touch tried; exit 1; fi; touch {output}"
"""


def test_a_job_that_succeeds_when_retried_is_not_failed(tmp_path):
    (tmp_path / "Snakefile").write_text(FLAKY)
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--retries", "1", "-d", str(tmp_path)]
    result = subprocess.run([*command, "-s", str(tmp_path / "Snakefile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Error in rule flaky" in result.stderr  # the first attempt's
    assert _snakemake(tmp_path)["failed_jobs"] == []
