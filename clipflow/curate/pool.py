"""The pool that curation works on: every embedded row (with embed.precomputed, every planned row), with its
image-text similarity, the original image size (the metadata's when input.metadata_cols has it, else the one the
download recorded), input.metadata_cols, and the configured heads' scores (aesthetic_score, punsafe). Pool row i
is index id i (shards in order, rows in key order)."""

from pathlib import Path

import pandas as pd

from clipflow.curate.scores import head_scores
from clipflow.embed.summary import pair_similarities
from clipflow.shards import SIZE_COLUMNS, plan_keys


def build_pool(
    metadata_paths, image_paths, text_paths, shard_parquets, plan_parquets, metadata_cols, score_models: dict
) -> pd.DataFrame:
    pool = pd.concat([pd.read_parquet(p) for p in metadata_paths], ignore_index=True)
    pool["clip_score"] = pair_similarities(image_paths, text_paths)
    for column, scores in head_scores(score_models, image_paths).items():
        pool[column] = scores
    from_plan = [column for column in metadata_cols if column not in pool.columns]
    if from_plan:  # embedded from the downloads: the metadata columns come from the plan, by key
        planned = pd.concat([_plan_columns(path, from_plan) for path in plan_parquets], ignore_index=True)
        pool = pool.merge(planned, on="key", how="left", validate="one_to_one")
    sizes = [column for column in SIZE_COLUMNS if column not in pool.columns]
    if sizes and shard_parquets:
        downloaded = pd.concat([pd.read_parquet(p, columns=["key", *sizes]) for p in shard_parquets])
        pool = pool.merge(downloaded.dropna(subset=sizes), on="key", how="left", validate="one_to_one")
    return pool


def _plan_columns(plan_parquet, columns: list[str]) -> pd.DataFrame:
    rows = pd.read_parquet(plan_parquet, columns=columns)
    rows.insert(0, "key", plan_keys(Path(plan_parquet).stem, len(rows)))
    return rows
