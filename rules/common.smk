import os

from snakemake.exceptions import WorkflowError

from clipflow import demo
from clipflow.errors import ClipflowError
from clipflow.planner import load_plan, make_plan

PLAN_DIR = "results/plan"
SHARDS_DIR = "results/shards"
DEMO_DIR = "results/demo"

# Rule scripts import clipflow from the workflow's own folder, whatever environment runs them.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])
)


wildcard_constraints:
    shard=r"\d{8}",


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


PLAN = current_plan()


def demo_images(wildcards):
    return [f"{DEMO_DIR}/site/images"] if config["demo"]["enabled"] else []


def downloaded_shards():
    return expand(
        f"{SHARDS_DIR}/{{shard}}{{suffix}}",
        shard=PLAN.shards,
        suffix=[".tar", ".parquet", "_stats.json"],
    )


def get_final_outputs():
    return ["results/summary/download.json", "results/summary/download.png"]
