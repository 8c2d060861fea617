"""clipflow: from image-text metadata to a searchable CLIP index."""

__version__ = "0.1.0"
