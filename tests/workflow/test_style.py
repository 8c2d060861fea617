"""The workflow passes Snakemake's linter and is snakefmt formatted; conda envs agree with the lock file."""

import re
import subprocess
import sys
from pathlib import Path

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


def rule_scripts() -> list[tuple[str, str, str]]:
    """(rule, conda env, script) of every rule that runs a script, read from rules/*.smk."""
    found = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=\s*rule \w+:)", smk.read_text()):
            rule = re.search(r"^\s*rule (\w+):", block, re.M)
            env = re.search(r'conda:\s*"\.\./(envs/[\w.]+)"', block)
            script = re.search(r'script:\s*"\.\./([\w/.]+)"', block)
            if rule and script:
                assert env, f"{smk.name}: rule {rule.group(1)} runs a script without a conda env"
                found.append((rule.group(1), env.group(1), script.group(1)))
    return found


def env_closure(env: str) -> set[str]:
    """The distributions a conda env's pip list installs: its pins and everything they require, as installed here."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    spec = yaml.safe_load((REPO / env).read_text())
    (pip,) = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    pending, closure = [Requirement(line).name for line in pip], set()
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in closure:
            continue
        closure.add(name)
        try:
            requirements = [Requirement(line) for line in requires(name) or []]
        except PackageNotFoundError:  # a requirement of a platform or Python other than this one
            continue
        pending += [r.name for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    return closure


# The clipflow modules a script loads when it starts: its own imports run, then sys.modules.
LOADED = """
import ast, sys
for node in ast.parse(open(sys.argv[1]).read()).body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        exec(compile(ast.Module([node], []), sys.argv[1], "exec"))
print(" ".join(sorted(name for name in sys.modules if name.split(".")[0] == "clipflow")))
"""


def top_level_imports(path) -> set[str]:
    """The top-level packages a file imports at module level (what runs when it is imported)."""
    import ast

    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_each_rule_s_script_imports_only_what_its_conda_env_installs():
    """conda cannot run here: the imports of each script, and of every clipflow module it loads, must come from
    the distributions its env's pins install (with their requirements)."""
    import importlib.util
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    closures, imported, missing = {}, {}, []
    for rule, env, script in rule_scripts():
        if script not in imported:
            result = subprocess.run([sys.executable, "-c", LOADED, str(REPO / script)], capture_output=True, text=True)
            assert result.returncode == 0, f"{script}: {result.stderr[-2000:]}"
            paths = [Path(importlib.util.find_spec(name).origin) for name in result.stdout.split()]
            imported[script] = set().union(top_level_imports(REPO / script), *map(top_level_imports, paths))
        closure = closures.setdefault(env, env_closure(env))
        for module in sorted(imported[script]):
            if module in sys.stdlib_module_names or module in ("clipflow", "snakemake"):  # snakemake: the job's own
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
            if not dists & closure:
                missing.append(f"rule {rule} ({env}, {script}) imports {module} ({', '.join(sorted(dists))})")
    assert not missing, "\n".join(missing)
