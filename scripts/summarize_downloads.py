from pathlib import Path

from clipflow import files, shards
from clipflow.download.accounting import format_summary, plot_summary, summarize
from clipflow.ingest.planner import load_plan
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    plan = load_plan(Path(snakemake.input.state).parent)
    shards_folder = shards.listed_folder(snakemake.input.batches, ("*.parquet",))
    summary = summarize(plan, [shards.rows_path(shards_folder, shard) for shard in plan.shards])
    files.write_json(snakemake.output.summary, summary)
    files.write_text(snakemake.output.table, format_summary(summary) + "\n")
    plot_summary(summary, snakemake.output.plot)
    print(format_summary(summary))
