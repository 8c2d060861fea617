"""Embed: the CLIP model (fetched once, loaded offline) and per-shard image and text embeddings."""
