"""The `clipflow` command's own surface: its version and its help."""

import subprocess
import sys
import tomllib

from conftest import REPO


def clipflow(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipflow.cli", *args], capture_output=True, text=True)


def test_version_is_the_package_s():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = clipflow("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"clipflow {version}"


def test_help_shows_each_default():
    query = " ".join(clipflow("query", "--help").stdout.split())  # unwrapped
    assert "(default: results/index)" in query and "(default: 10)" in query and "(default: jsonl)" in query
    serve = " ".join(clipflow("serve", "--help").stdout.split())
    assert "(default: 1234)" in serve and "(default: 15)" in serve and "(default: False)" not in serve
