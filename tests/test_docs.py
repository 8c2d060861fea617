"""The docs check: every link in the docs leads somewhere, and every command they give is one the code accepts
(clipflow's parser, the benchmarks' options, the files a snakemake command names). The README's two commands are
what CI runs; the stages' commands are run by the tests of each stage."""

import re
import shlex

import pytest

from clipflow.cli import build_parser
from conftest import REPO

DOCS = [REPO / "README.md", REPO / "config/README.md", REPO / "bench/RESULTS.md", *sorted((REPO / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def commands(path) -> list[str]:
    """Shell commands: each line of a bash block (joined across backslashes), and inline code that is one."""
    text = path.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("#"):
                continue
            found += [part.strip() for part in line.split("&&") if part.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose.replace("\n", " ")):
        is_command = re.match(r"(\.venv/bin/)?(clipflow|snakemake|python bench/)\S*(\s|$)", span) and (
            len(span.split()) > 2 or span.startswith("python bench/")
        )
        if is_command and not re.search(r"[\[|…]|\.\.\.", span):  # not a command's name, nor a synopsis
            found.append(span)
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_leads_to_a_file_and_heading(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"https?://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{path.name}: {target} (headings: {sorted(anchors(linked))})"


def bench_options(script) -> set[str]:
    return set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', script.read_text()))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_is_one_the_code_accepts(path):
    parser = build_parser()
    checked = 0
    for command in commands(path):
        try:
            words = shlex.split(command)
        except ValueError as error:
            pytest.fail(f"{path.name}: `{command}`: {error}")
        program = words[0].removeprefix(".venv/bin/")
        if program == "clipflow":
            try:
                parser.parse_args(words[1:])
            except SystemExit as refused:
                pytest.fail(f"{path.name}: `{command}` is refused by clipflow's parser ({refused})")
        elif program == "python" and words[1].startswith("bench/"):
            script = REPO / words[1]
            assert script.exists(), f"{path.name}: `{command}`"
            unknown = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - bench_options(script)
            assert not unknown, f"{path.name}: `{command}`: {script.name} has no {sorted(unknown)}"
        elif program == "snakemake":
            for flag, value in zip(words, words[1:]):
                if flag in ("--configfile", "--profile") and value.startswith(("config/", "profiles/")):
                    assert (REPO / value).exists(), f"{path.name}: `{command}` names {value}, which is not there"
        else:
            continue
        checked += 1
    assert checked or path.name == "RESULTS.md" or not commands(path), path
