from pathlib import Path

import pandas as pd

from clipflow import files
from clipflow.errors import ClipflowError
from clipflow.evaluate.holdout import choose, write_retrieval_dataset
from clipflow.logs import redirect_to_log
from clipflow.shards import ShardReader

with redirect_to_log(snakemake.log[0]):
    pool = pd.read_parquet(snakemake.input.pool, columns=["uid", "key", "shard", "caption"])
    held_out = ~pd.read_parquet(snakemake.input.held_out)["keep"].to_numpy()
    reader = ShardReader(Path(snakemake.input.batches[0]).parent.parent)  # shards sit beside batches/
    samples = choose(pool[held_out], reader, snakemake.params.max_samples)
    print(f"{held_out.sum()} rows held out, {len(samples)} with an image in the evaluation's slice")
    if len(samples) < 2:
        raise ClipflowError(
            f"the held-out slice has {len(samples)} downloaded images: retrieval needs 2 or more (raise "
            "evaluate.holdout_fraction)"
        )
    folder = Path(snakemake.output.dataset[0]).parent
    write_retrieval_dataset(samples, folder)
    files.write_parquet(samples.drop(columns="jpg"), folder / "samples.parquet")
