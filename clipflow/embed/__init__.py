"""Embed: the CLIP model (fetched once, loaded offline) and per-shard image and text embeddings.

The embeddings folder holds, per shard, `image/NNNNNNNN.npy` and `text/NNNNNNNN.npy` (L2-normalized float16)
aligned row for row with `metadata/NNNNNNNN.parquet`, and per embedding job (chunk) `info/NNNNNNNN.json`.
"""

import json
from pathlib import Path

SHARD_FILES = {"image": "image/{shard}.npy", "text": "text/{shard}.npy", "metadata": "metadata/{shard}.parquet"}


def shard_outputs(folder: Path | str, shard: str) -> dict[str, Path]:
    """Shard `shard`'s embedding files in the embeddings folder `folder`, by kind."""
    return {kind: Path(folder) / pattern.format(shard=shard) for kind, pattern in SHARD_FILES.items()}


def embedding_files(listing: Path | str, kind: str) -> list[str]:
    """Every shard's `kind` file, in the pool's order, from the listing of the embedding chunks' records
    (clipflow.workflow.write_listing); each record, in the embeddings folder's info/, names its shards."""
    from clipflow.workflow import listed

    paths = []
    for record in listed(listing):
        folder = Path(record).parent.parent
        shards = json.loads(Path(record).read_text())["shards"]
        paths += [str(folder / SHARD_FILES[kind].format(shard=shard)) for shard in shards]
    return paths
