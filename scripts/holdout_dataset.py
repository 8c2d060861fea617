from pathlib import Path

import pyarrow.parquet as pq

from clipflow import files
from clipflow.errors import ClipflowError
from clipflow.evaluate.holdout import slice_samples, write_retrieval_dataset
from clipflow.logs import redirect_to_log
from clipflow.bulk import job_cache
from clipflow.shards import ShardReader, listed, records_folder

BATCH = 1_000_000


def held_batches():
    """The pool and its held-out table side by side, a batch at a time."""
    pool = pq.ParquetFile(snakemake.input.pool).iter_batches(BATCH, columns=["uid", "key", "shard", "caption"])
    keep = pq.ParquetFile(snakemake.input.held_out).iter_batches(BATCH, columns=["keep"])
    for rows, flags in zip(pool, keep, strict=True):
        yield rows.to_pandas(), ~flags.column("keep").to_numpy(zero_copy_only=False)


with redirect_to_log(snakemake.log[0]):
    batches = listed(snakemake.input.batches)
    with job_cache(batches, snakemake.config) as cache:
        samples, held = slice_samples(
            held_batches, ShardReader(records_folder(batches), cache), snakemake.params.max_samples
        )
    print(f"{held} rows held out, {len(samples)} with an image in the evaluation's slice")
    if len(samples) < 2:
        raise ClipflowError(
            f"the held-out slice has {len(samples)} downloaded images: retrieval needs 2 or more (raise "
            "evaluate.holdout_fraction)"
        )
    folder = Path(snakemake.output.dataset[0]).parent
    write_retrieval_dataset(samples, folder)
    files.write_parquet(samples.drop(columns="jpg"), folder / "samples.parquet")
