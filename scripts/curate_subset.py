import json
from pathlib import Path

import numpy as np
import pandas as pd

from clipflow.logs import redirect_to_log
from clipflow.reporting import plot_examples, plot_filter_effects, plot_score_cut
from clipflow.searcher import ShardReader
from clipflow.subset import combine, examples, uid_array

with redirect_to_log(snakemake.log[0]):
    pool = pd.read_parquet(snakemake.input.pool)
    names = snakemake.params.filters
    tables = {name: pd.read_parquet(path) for name, path in zip(names, snakemake.input.tables)}
    infos = {name: json.loads(Path(path).read_text()) for name, path in zip(names, snakemake.input.infos)}
    keep, summary = combine(pool, tables)
    summary["filter_options"] = {name: info["options"] for name, info in infos.items()}
    thresholds = {name: info["threshold"] for name, info in infos.items() if info.get("threshold") is not None}
    summary["clip_score_thresholds"] = thresholds

    kept = pool[keep]
    np.save(snakemake.output.uids, uid_array(kept["uid"]))
    kept.to_parquet(snakemake.output.kept, index=False)
    Path(snakemake.output.summary).write_text(json.dumps(summary, indent=1))
    plot_filter_effects(summary, snakemake.output.effects)
    plot_score_cut(pool["clip_score"].to_numpy(), keep, thresholds, snakemake.output.score_cut)
    reader = ShardReader(Path(snakemake.input.batches[0]).parent.parent)  # shards sit beside batches/
    plot_examples(examples(pool, keep, tables, reader), snakemake.output.examples)
