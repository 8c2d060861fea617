from pathlib import Path

from clipflow import files
from clipflow.curate.pool import build_pool
from clipflow.curate.scores import SCORE_COLUMNS
from clipflow.embed import embedding_files
from clipflow.ingest.planner import load_plan
from clipflow.shards import listed_folder, rows_path
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    plan = load_plan(Path(snakemake.input.plan).parent)
    embeddings = listed_folder(snakemake.input.chunks)
    # The downloads' parquets, but none when the embeddings are precomputed (the pool is then made from metadata)
    downloads = listed_folder(snakemake.input.batches) if "batches" in snakemake.input.keys() else None
    pool = build_pool(
        *(embedding_files(embeddings, plan.shards, kind) for kind in ("metadata", "image", "text")),
        [str(rows_path(downloads, shard)) for shard in plan.shards] if downloads else [],
        [plan.shard_path(shard) for shard in plan.shards],
        snakemake.params.metadata_cols,
        {key: snakemake.input.get(key) for key in SCORE_COLUMNS},
    )
    files.write_parquet(pool, snakemake.output.pool)
