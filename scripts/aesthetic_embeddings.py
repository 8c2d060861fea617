import numpy as np
import pandas as pd

from clipflow.curate.scores import rating_embeddings
from clipflow.embed import embedding_files
from clipflow.shards import listed_shards
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    scores = pd.read_parquet(snakemake.input.pool, columns=["aesthetic_score"])["aesthetic_score"].to_numpy()
    folder, shards = listed_shards(snakemake.input.chunks)  # the embeddings folder, the pool's shards
    for path, embedding in zip(
        snakemake.output.ratings, rating_embeddings(scores, embedding_files(folder, shards, "image"))
    ):
        np.save(path, embedding)
