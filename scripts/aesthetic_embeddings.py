import numpy as np

from clipflow.curate.pool import pool_batches_with
from clipflow.curate.scores import rating_embeddings
from clipflow.embed import embedding_files
from clipflow.logs import redirect_to_log
from clipflow.shards import listed_shards

with redirect_to_log(snakemake.log[0]):
    folder, shards = listed_shards(snakemake.input.chunks, ("image/*",))  # the embeddings folder, the pool's shards
    images = embedding_files(folder, shards, "image")
    groups = pool_batches_with(snakemake.input.pool, images, "aesthetic_embeddings", ["aesthetic_score"])
    ratings = rating_embeddings((rows["aesthetic_score"].to_numpy(), embeddings) for rows, embeddings in groups)
    for path, embedding in zip(snakemake.output.ratings, ratings):
        np.save(path, embedding)
