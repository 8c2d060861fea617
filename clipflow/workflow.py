"""What the Snakefile asks of the package besides paths: the shard plan, the records whose files are gone,
and the demo's image server. The rule layer (rules/common.smk) stays declarative on top of these."""

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipflow import demo
from clipflow.errors import ClipflowError
from clipflow.ingest.planner import Plan, load_plan, make_plan, unplanned_sources


def workflow_plan(config: dict, plan_dir: str, demo_dir: str, is_main_process: bool, read_only: bool) -> Plan:
    """The shard plan, brought up to date by Snakemake's main process only; jobs read what it decided. With
    `read_only` (a dry run, --lint) nothing in the results is written (see read_only_plan)."""
    if not is_main_process:
        return load_plan(plan_dir)
    if read_only:
        return read_only_plan(config, Path(plan_dir), Path(demo_dir))
    if config["demo"]["enabled"]:
        demo.write_metadata(f"{demo_dir}/metadata.csv", config["demo"]["images"], config["demo"]["port"])
    return make_plan(config, plan_dir)


def read_only_plan(config: dict, plan_dir: Path, demo_dir: Path) -> Plan:
    """The plan a run would make, writing nothing in the results: the plan as it stands when it holds every
    input file; else a copy of its state, extended (or made, before the first run) in a temporary folder that is
    removed at exit. The earlier plan's key stores are linked there, read and never written."""
    scratch = Path(tempfile.mkdtemp(prefix="clipflow-dry-run-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    demo_csv, images, port = demo_dir / "metadata.csv", config["demo"]["images"], config["demo"]["port"]
    if config["demo"]["enabled"] and not demo.metadata_is_current(demo_csv, images, port):
        paths = [str(scratch / "metadata.csv") if Path(p) == demo_csv else p for p in config["input"]["paths"]]
        config = {**config, "input": {**config["input"], "paths": paths}}
        demo.write_metadata(scratch / "metadata.csv", images, port)
    if not (plan_dir / "state.json").exists():
        return make_plan(config, scratch / "plan")
    plan = load_plan(plan_dir)
    unplanned = unplanned_sources(config, plan)
    if not unplanned:
        return plan
    print(f"clipflow: {len(unplanned)} new input files ({unplanned[0]}, ...) planned for this dry run", file=sys.stderr)
    (scratch / "plan").mkdir()
    shutil.copyfile(plan_dir / "state.json", scratch / "plan/state.json")
    for kind in ("keys", "uids"):
        store = plan_dir / f"{kind}-{plan.state['key_generation']}"
        if store.is_dir():
            os.symlink(store.resolve(), scratch / "plan" / store.name)
    return make_plan(config, scratch / "plan")


def consecutive(shards: list[str], size: int) -> dict[str, list[str]]:
    """Jobs over `size` consecutive shards, each named after its first shard."""
    return {shards[i]: shards[i : i + size] for i in range(0, len(shards), size)}


def reopen_incomplete(
    records: dict[str, list[Path]],
    beside: bool = False,
    remove: bool = True,
    bulk: tuple[str, dict[str, int]] | None = None,
) -> dict[str, str]:
    """Remove each record (a job's proof of completion) whose files are not all there, or not of the sizes it
    lists (`file_sizes`, relative to the folder above the record's, or with `beside` to the record's own), so
    that its job runs again; returns each such record with what is wrong. Without `remove` (a dry run) the
    records stay. Each folder is listed once: at scale there are ~100k files.

    With `bulk`, (the folder URL the records' files are to be kept in, its listing's sizes by the local paths
    they stand for: clipflow.bulk.listed_sizes), the files are looked up there, and a record that names another
    place for them (or none) is removed too."""
    listings: dict[Path, dict[str, int]] = {}

    def size(path: Path) -> int | None:
        if bulk:
            return bulk[1].get(path.as_posix())
        if path.parent not in listings:
            found = os.scandir(path.parent) if path.parent.is_dir() else []
            listings[path.parent] = {e.name: e.stat().st_size for e in found}
        return listings[path.parent].get(path.name)

    reopened = {}
    for record, files in records.items():
        if not os.path.exists(record):
            continue
        written = json.loads(Path(record).read_text())
        sizes = written.get("file_sizes", {})
        root = Path(record).parent if beside else Path(record).parent.parent
        problems = []
        if bulk and written.get("bulk") != bulk[0]:
            problems.append(f"its files are kept in {written.get('bulk') or root}, storage.bulk says {bulk[0]}")
        for path in map(Path, files):
            found = size(path)
            recorded = sizes.get(path.relative_to(root).as_posix()) if path.is_relative_to(root) else None
            if found is None:
                problems.append(f"{path.name} missing")
            elif recorded is not None and found != recorded:
                problems.append(f"{path.name} is {found} bytes, {recorded} were written")
        if problems:
            done = "removed, its job runs again" if remove else "would be removed: its job reruns"
            print(f"clipflow: {problems[:5]}: {record} {done}", file=sys.stderr)
            if remove:
                os.remove(record)
            reopened[record] = "; ".join(problems)
    return reopened


def start_demo_server(folder: str, port: int) -> subprocess.Popen:
    """Serve the demo images while the workflow runs; the server exits with this process."""
    os.makedirs(folder, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "clipflow.cli", "demo-serve", "--folder", folder]
        + ["--port", str(port), "--parent-pid", str(os.getpid())]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ClipflowError(f"demo server could not start on 127.0.0.1:{port} (in use?); set demo.port")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise ClipflowError(f"demo server did not answer on 127.0.0.1:{port} within 30 s")


def stop_demo_server(server: subprocess.Popen | None) -> None:
    if server is not None:
        server.terminate()
        server.wait(timeout=10)
