"""The pool that curation works on: every embedded row, with its image-text similarity, the original image size
from the download's parquet, and the configured heads' scores (aesthetic_score, punsafe). Pool row i is index id
i (shards in order, rows in key order)."""

import pandas as pd

from clipflow.curate.scores import head_scores
from clipflow.embed.summary import pair_similarities
from clipflow.shards import SIZE_COLUMNS


def build_pool(metadata_paths, image_paths, text_paths, shard_parquets, score_models: dict) -> pd.DataFrame:
    pool = pd.concat([pd.read_parquet(p) for p in metadata_paths], ignore_index=True)
    pool["clip_score"] = pair_similarities(image_paths, text_paths)
    for column, scores in head_scores(score_models, image_paths).items():
        pool[column] = scores
    sizes = pd.concat([pd.read_parquet(p, columns=["key", *list(SIZE_COLUMNS)]) for p in shard_parquets])
    return pool.merge(sizes.dropna(subset=list(SIZE_COLUMNS)), on="key", how="left", validate="one_to_one")
