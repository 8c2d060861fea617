import json
from pathlib import Path

from clipflow import files
from clipflow.curate.plots import plot_examples, plot_filter_effects, plot_score_cut
from clipflow.curate.subset import examples, write_subset
from clipflow.curate.takedowns import TAKEDOWN
from clipflow.evaluate.holdout import HELD_OUT
from clipflow.logs import redirect_to_log
from clipflow.bulk import job_cache
from clipflow.shards import ShardReader, listed, records_folder

with redirect_to_log(snakemake.log[0]):
    names = snakemake.params.filters
    tables = dict(zip(names, snakemake.input.tables))
    infos = {name: json.loads(Path(path).read_text()) for name, path in zip(names, snakemake.input.infos)}
    if "held_out" in snakemake.input.keys():  # while models train, the evaluation's rows go first
        tables = {HELD_OUT: snakemake.input.held_out, **tables}
    if "takedowns" in snakemake.input.keys():  # and before them, the rows a blocklist takes down
        tables = {TAKEDOWN: snakemake.input.takedowns, **tables}
    output = snakemake.output
    result = write_subset(snakemake.input.pool, tables, output.uids, output.kept, output.removed)
    histogram, kept_by_group = result.pop("score_histogram"), result.pop("kept_by_group")
    thresholds = {name: info["threshold"] for name, info in infos.items() if info.get("threshold") is not None}
    summary = {**result, "filter_options": {name: info["options"] for name, info in infos.items()}}
    files.write_json(output.summary, {**summary, "clip_score_thresholds": thresholds})
    plot_filter_effects(summary, output.effects)
    plot_score_cut(histogram, thresholds, output.score_cut)
    # shards sit beside batches/; a subset chosen before the download (embed.precomputed) has no images yet
    batches = listed(snakemake.input.batches) if "batches" in snakemake.input.keys() else []  # the downloads
    with job_cache(batches, snakemake.config) as cache:
        reader = ShardReader(records_folder(batches), cache) if batches else None
        plot_examples(examples(snakemake.input.pool, tables, kept_by_group, reader), output.examples)
