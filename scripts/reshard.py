from pathlib import Path

import pandas as pd

from clipflow import files
from clipflow.curate.reshard import downloaded_only, reshard
from clipflow.logs import redirect_to_log
from clipflow.shards import listed_folder

with redirect_to_log(snakemake.log[0]):
    shards_folder = listed_folder(snakemake.input.batches)
    kept = pd.read_parquet(snakemake.input.kept, columns=["uid", "key", "shard", "url", "caption"])
    kept, not_downloaded = downloaded_only(kept, shards_folder)
    folder = Path(snakemake.output.record).parent
    record = reshard(kept, shards_folder, folder, snakemake.params.samples_per_shard, snakemake.threads)
    record["kept_not_downloaded"] = not_downloaded
    files.write_json(snakemake.output.record, record)
