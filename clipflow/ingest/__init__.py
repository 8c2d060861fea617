"""Ingest: read metadata files, give each row its key, drop exact duplicates and plan shards."""
