from pathlib import Path

from clipflow import files, shards
from clipflow.bulk import job_cache
from clipflow.download.accounting import format_summary, plot_summary, summarize
from clipflow.ingest.planner import load_plan
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    plan = load_plan(Path(snakemake.input.state).parent)
    records = shards.listed(snakemake.input.batches)
    shards_folder = shards.records_folder(records)
    with job_cache(records, snakemake.config) as cache:
        summary = summarize(plan, [shards.rows_path(shards_folder, shard) for shard in plan.shards], cache)
    files.write_json(snakemake.output.summary, summary)
    files.write_text(snakemake.output.table, format_summary(summary) + "\n")
    plot_summary(summary, snakemake.output.plot)
    print(format_summary(summary))
