import json
from pathlib import Path

from clipflow.accounting import format_summary, plot_summary, summarize
from clipflow.logs import redirect_to_log
from clipflow.planner import load_plan

with redirect_to_log(snakemake.log[0]):
    plan = load_plan(Path(snakemake.input.state).parent)
    shards_folder = Path(snakemake.input.records[0]).parent.parent
    summary = summarize(plan, [shards_folder / f"{shard}.parquet" for shard in plan.shards])
    Path(snakemake.output.summary).write_text(json.dumps(summary, indent=1))
    Path(snakemake.output.table).write_text(format_summary(summary) + "\n")
    plot_summary(summary, snakemake.output.plot)
    print(format_summary(summary))
