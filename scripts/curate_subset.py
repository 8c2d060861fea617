import json
from pathlib import Path

import numpy as np
import pandas as pd

from clipflow import files
from clipflow.curate.plots import plot_examples, plot_filter_effects, plot_score_cut
from clipflow.curate.subset import REMOVED_ROW_GROUP, combine, examples, removed_rows, uid_array
from clipflow.evaluate.holdout import HELD_OUT
from clipflow.logs import redirect_to_log
from clipflow.shards import ShardReader, listed_folder

with redirect_to_log(snakemake.log[0]):
    pool = pd.read_parquet(snakemake.input.pool)
    names = snakemake.params.filters
    tables = {name: pd.read_parquet(path) for name, path in zip(names, snakemake.input.tables)}
    infos = {name: json.loads(Path(path).read_text()) for name, path in zip(names, snakemake.input.infos)}
    if "held_out" in snakemake.input.keys():  # while models train, the evaluation's rows go first
        tables = {HELD_OUT: pd.read_parquet(snakemake.input.held_out), **tables}
    keep, summary = combine(pool, tables)
    summary["filter_options"] = {name: info["options"] for name, info in infos.items()}
    thresholds = {name: info["threshold"] for name, info in infos.items() if info.get("threshold") is not None}
    summary["clip_score_thresholds"] = thresholds

    kept = pool[keep]
    with files.replacing(snakemake.output.uids) as tmp, open(tmp, "wb") as f:
        np.save(f, uid_array(kept["uid"]))
    files.write_parquet(kept, snakemake.output.kept)
    files.write_parquet(removed_rows(pool, keep, tables), snakemake.output.removed, row_group_size=REMOVED_ROW_GROUP)
    files.write_json(snakemake.output.summary, summary)
    plot_filter_effects(summary, snakemake.output.effects)
    plot_score_cut(pool["clip_score"].to_numpy(), keep, thresholds, snakemake.output.score_cut)
    # shards sit beside batches/; a subset chosen before the download (embed.precomputed) has no images yet
    batches = snakemake.input.get("batches")  # the downloads' listing
    reader = ShardReader(listed_folder(batches)) if batches else None
    plot_examples(examples(pool, keep, tables, reader), snakemake.output.examples)
