from pathlib import Path

from clipflow.bulk import job_cache
from clipflow.curate.pool import write_pool
from clipflow.curate.scores import SCORE_COLUMNS
from clipflow.embed import embedding_files
from clipflow.ingest.planner import load_plan
from clipflow.shards import listed, records_folder, rows_path
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    plan = load_plan(Path(snakemake.input.plan).parent)
    chunks = listed(snakemake.input.chunks)
    embeddings = records_folder(chunks)
    # The downloads' parquets, but none when the embeddings are precomputed (the pool is then made from metadata)
    batches = listed(snakemake.input.batches) if "batches" in snakemake.input.keys() else []
    downloads = records_folder(batches) if batches else None
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
    with job_cache(chunks + batches, snakemake.config) as cache:
        write_pool(shards, snakemake.params.metadata_cols, models, snakemake.output.pool, cache)
