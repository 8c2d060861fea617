import numpy as np

from clipflow.bulk import job_cache
from clipflow.curate.pool import pool_batches_with
from clipflow.curate.scores import rating_embeddings
from clipflow.embed import embedding_files
from clipflow.index.vectors import StoredVectors
from clipflow.logs import redirect_to_log
from clipflow.shards import listed, listed_shards

with redirect_to_log(snakemake.log[0]):
    folder, shards = listed_shards(snakemake.input.chunks)  # the embeddings folder, the pool's shards
    with job_cache(listed(snakemake.input.chunks), snakemake.config) as cache:
        images = StoredVectors.of(embedding_files(folder, shards, "image"), cache)
        groups = pool_batches_with(snakemake.input.pool, images, "aesthetic_embeddings", ["aesthetic_score"])
        ratings = rating_embeddings((rows["aesthetic_score"].to_numpy(), embeddings) for rows, embeddings in groups)
    for path, embedding in zip(snakemake.output.ratings, ratings):
        np.save(path, embedding)
