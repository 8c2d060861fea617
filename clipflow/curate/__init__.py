"""Curate: DataComp-style filters over the embedded pool, subsets, and resharding for training."""
