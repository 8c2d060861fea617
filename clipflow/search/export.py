"""`clipflow filter`: export the samples nearest a text or image query, as clip-retrieval's filter does.

Writes `matches.parquet` (rank, similarity, id, the index's metadata columns and `image_file`) and the
matching JPEGs, read straight out of the webdataset shards, as `images/RANK_KEY.jpg`.
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from clipflow.errors import ClipflowError
from clipflow.search.query import encode_query
from clipflow.index.folder import ClipIndex
from clipflow.index.vectors import RERANK_FACTOR
from clipflow.shards import ShardReader


def _search_above(index: ClipIndex, vector, modality: str, threshold: float, limit: int | None):
    """Every result with similarity >= threshold: widen k until the last result falls below it.

    A range search would do in one call, but not every faiss index type (HNSW) supports it."""
    total = index.metadata.num_rows
    k = min(1024, total) if limit is None else min(limit, total)
    while True:
        similarities, ids = index.search(vector, modality, k)
        similarities, ids = similarities[0], ids[0]
        if k >= total or (limit is not None and k >= limit) or similarities[-1] < threshold:
            keep = (similarities >= threshold) & (ids >= 0)
            return similarities[keep], ids[keep]
        k = min(k * 4, total if limit is None else limit)


def filter_index(
    index_folder,
    shards_folder,
    output,
    text=None,
    image=None,
    modality="image",
    k=None,
    threshold=None,
    rerank_factor=RERANK_FACTOR,
) -> dict:
    if k is None and threshold is None:
        raise ClipflowError("give -k, --threshold, or both")
    index = ClipIndex(index_folder, rerank_factor)
    index.index(modality)
    output = Path(output)
    vector = encode_query(index, text, image)
    if threshold is None:
        similarities, ids = index.search(vector, modality, k)
        found = ids[0] >= 0
        similarities, ids = similarities[0][found], ids[0][found]
    else:
        similarities, ids = _search_above(index, vector, modality, threshold, k)

    shutil.rmtree(output / "images", ignore_errors=True)
    (output / "images").mkdir(parents=True)
    shards = ShardReader(shards_folder)
    rows = pd.DataFrame(index.rows(ids)) if len(ids) else pd.DataFrame(columns=index.metadata.column_names)
    rows.insert(0, "rank", np.arange(1, len(rows) + 1))
    rows.insert(1, "similarity", similarities.astype(np.float32))
    rows.insert(2, "id", ids.astype(np.int64))
    image_files = []
    for rank, row in zip(rows["rank"], rows.to_dict("records")):
        data = shards.image_bytes(row.get("shard"), row.get("key")) if row.get("shard") else None
        if data is None:
            image_files.append(None)
            continue
        name = f"images/{rank:06d}_{row['key']}.jpg"
        (output / name).write_bytes(data)
        image_files.append(name)
    rows["image_file"] = image_files
    rows.to_parquet(output / "matches.parquet", index=False)
    missing = sum(f is None for f in image_files)
    return {"matches": len(rows), "images": len(rows) - missing, "images_missing": missing}
