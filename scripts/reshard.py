import json
from pathlib import Path

import pandas as pd

from clipflow.logs import redirect_to_log
from clipflow.resharder import reshard

with redirect_to_log(snakemake.log[0]):
    kept = pd.read_parquet(snakemake.input.kept, columns=["uid", "key", "shard", "url", "caption"])
    shards_folder = Path(snakemake.input.batches[0]).parent.parent  # shards sit beside batches/
    folder = Path(snakemake.output.record).parent
    record = reshard(kept, shards_folder, folder, snakemake.params.options["samples_per_shard"], snakemake.threads)
    Path(snakemake.output.record).write_text(json.dumps(record, indent=1))
