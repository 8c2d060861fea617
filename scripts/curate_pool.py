from pathlib import Path

from clipflow.curate.pool import write_pool
from clipflow.curate.scores import SCORE_COLUMNS
from clipflow.embed import embedding_files
from clipflow.ingest.planner import load_plan
from clipflow.shards import listed_folder, rows_path
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    plan = load_plan(Path(snakemake.input.plan).parent)
    embeddings = listed_folder(snakemake.input.chunks)
    # The downloads' parquets, but none when the embeddings are precomputed (the pool is then made from metadata)
    downloads = listed_folder(snakemake.input.batches, ("*.parquet",)) if "batches" in snakemake.input.keys() else None
    metadata, image, text = (embedding_files(embeddings, plan.shards, kind) for kind in ("metadata", "image", "text"))
    shards = [
        {
            "metadata": metadata[i],
            "image": image[i],
            "text": text[i],
            "plan": plan.shard_path(shard),
            "download": str(rows_path(downloads, shard)) if downloads else None,
        }
        for i, shard in enumerate(plan.shards)
    ]
    models = {key: snakemake.input.get(key) for key in SCORE_COLUMNS}
    write_pool(shards, snakemake.params.metadata_cols, models, snakemake.output.pool)
