import json
from pathlib import Path

import pandas as pd

from clipflow.curation import run_filter
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    pool = pd.read_parquet(snakemake.input.pool)
    table, info = run_filter(snakemake.params.options, pool, snakemake.input.embeddings)
    table.to_parquet(snakemake.output.table, index=False)
    Path(snakemake.output.info).write_text(json.dumps(info, indent=1))
