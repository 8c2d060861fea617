"""Evaluating trained models: the held-out slice of the pool, clip_benchmark's tasks on it and on local data sets."""
