"""The workflow passes Snakemake's linter and is snakefmt formatted; conda envs agree with the lock file."""

import re
import subprocess
import sys

import yaml

from conftest import REPO


def test_snakemake_lint_is_clean(tmp_path):
    command = [sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    command += ["--configfile", str(REPO / "config" / "config.yaml")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], [".snakemake"]), "--lint wrote into the folder"
    assert not (tmp_path / "results").exists()


def test_a_dry_run_in_a_fresh_folder_lists_every_job_and_writes_nothing(tmp_path):
    command = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    command += ["--configfile", str(REPO / "config" / "config.yaml"), "--cores", "1"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "download_batch" in result.stdout and "index_merge" in result.stdout  # planned in a temporary folder
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".snakemake" not in p.parts]
    assert written == [], written


def test_snakefmt_formatted():
    command = [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def locked_versions() -> dict[str, str]:
    """The shipped environment's pins: requirements.lock and what is installed without its dependencies."""
    pins = {}
    for lock in ("requirements.lock", "requirements-nodeps.lock"):
        for line in (REPO / lock).read_text().splitlines():
            if line and not line.startswith("#"):
                name, version = line.split("==")
                pins[name.lower().replace("_", "-")] = version
    return pins


def test_conda_envs_pin_what_the_lock_file_pins():
    locked = locked_versions()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        (pip,) = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
        assert "python=3.11" in spec["dependencies"], env
        for requirement in pip:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", requirement).groups()
            assert locked.get(name.lower().replace("_", "-")) == version, f"{env.name}: {requirement}"


def test_every_rule_names_an_env_that_exists():
    for rules in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"\.\./(envs/[\w.-]+)"', rules.read_text()):
            assert (REPO / env).exists(), f"{rules.name}: {env}"


def test_pyproject_pins_match_the_lock_file():
    locked = locked_versions()
    text = (REPO / "pyproject.toml").read_text()
    dependencies = re.search(r"dependencies = \[(.*?)\]", text, re.S).group(1)
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', dependencies):
        assert locked[name.lower().replace("_", "-")] == version, name
