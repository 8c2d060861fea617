"""Embed: the CLIP model (fetched once, loaded offline) and per-shard image and text embeddings.

The embeddings folder holds, per shard, `image/NNNNNNNN.npy` and `text/NNNNNNNN.npy` (L2-normalized float16)
aligned row for row with `metadata/NNNNNNNN.parquet`, and per embedding job (chunk) `info/NNNNNNNN.json`.
"""

from pathlib import Path

SHARD_FILES = {"image": "image/{shard}.npy", "text": "text/{shard}.npy", "metadata": "metadata/{shard}.parquet"}


def shard_outputs(folder: Path | str, shard: str) -> dict[str, Path]:
    """Shard `shard`'s embedding files in the embeddings folder `folder`, by kind."""
    return {kind: Path(folder) / pattern.format(shard=shard) for kind, pattern in SHARD_FILES.items()}


def embedding_files(folder: Path | str, shards: list[str], kind: str) -> list[str]:
    """The `kind` file of each of `shards` in the embeddings folder `folder`, in order."""
    return [str(Path(folder) / SHARD_FILES[kind].format(shard=shard)) for shard in shards]
