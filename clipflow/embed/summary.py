"""Embedding summary and plots for the Snakemake report."""

import json
from pathlib import Path

import numpy as np

from clipflow.bulk import Cache


def pair_similarities(image_paths, text_paths) -> np.ndarray:
    """Cosine similarity of each row's image and text embedding (both are L2-normalized)."""
    parts = [
        np.einsum("ij,ij->i", np.load(i).astype(np.float32), np.load(t).astype(np.float32))
        for i, t in zip(image_paths, text_paths)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.float32)


class SimilarityHistogram:
    """Image-text similarities counted in BINS equal bins over [-1, 1], a shard at a time, so that the summary holds
    512 KB at any pool size: the mean and extremes exact, quantiles to within a bin (3e-5)."""

    BINS = 1 << 16

    def __init__(self):
        self.counts = np.zeros(self.BINS, np.int64)
        self.total, self.sum, self.low, self.high = 0, 0.0, np.inf, -np.inf

    def add(self, similarities: np.ndarray) -> None:
        if len(similarities):
            bins = ((np.clip(similarities, -1, 1) + 1) / 2 * self.BINS).astype(np.int64).clip(0, self.BINS - 1)
            self.counts += np.bincount(bins, minlength=self.BINS)
            self.total += len(similarities)
            self.sum += float(similarities.astype(np.float64).sum())
            self.low, self.high = min(self.low, float(similarities.min())), max(self.high, float(similarities.max()))

    def quantile(self, q: float) -> float:
        """numpy's (linear) quantile: between the two order statistics around rank q * (n - 1), each placed within
        its bin as if the bin's values were spread evenly, so within a bin of the exact one."""
        rank = q * (self.total - 1)
        below, above = self._order_statistic(int(rank)), self._order_statistic(min(int(rank) + 1, self.total - 1))
        return float(np.clip(below + (rank - int(rank)) * (above - below), self.low, self.high))

    def _order_statistic(self, rank: int) -> float:
        ends = np.cumsum(self.counts)
        found = int(np.searchsorted(ends, rank, "right"))
        inside = (rank - (ends[found - 1] if found else 0) + 0.5) / self.counts[found]
        return -1 + 2 * (found + inside) / self.BINS

    def summary(self) -> dict:
        if not self.total:
            return {"mean": None, "quantiles": {}}
        return {"mean": self.sum / self.total, "quantiles": {q: self.quantile(q) for q in (0.05, 0.5, 0.95)}}

    def binned(self, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Counts in `bins` bins over the similarities' range, and their edges, for a plot."""
        centres = -1 + (np.arange(self.BINS) + 0.5) * 2 / self.BINS
        edges = np.linspace(self.low, self.high, bins + 1) if self.total else np.linspace(-1, 1, bins + 1)
        return np.histogram(np.clip(centres, edges[0], edges[-1]), edges, weights=self.counts)[0], edges


def summarize_embeddings(
    info_paths, image_paths, text_paths, cache: Cache | None = None
) -> tuple[dict, SimilarityHistogram]:
    """The embedding jobs' summary, and the similarity of each row's image and text, read a shard at a time (those
    on bulk storage through `cache`)."""
    infos = [json.loads(Path(p).read_text()) for p in info_paths]
    similarities = SimilarityHistogram()
    local = cache.local if cache else Path
    for image, text in zip(image_paths, text_paths):
        similarities.add(pair_similarities([local(image)], [local(text)]))
    summary = {
        "provenance": infos[0]["provenance"] if infos else None,
        "embedded": sum(i["embedded"] for i in infos),
        "decode_failed": sum(i["decode_failed"] for i in infos),
        "image_text_similarity": similarities.summary(),
        "jobs": [
            {
                "chunk": i["shards"][0],
                "shards": i["shards"],
                "embedded": i["embedded"],
                "decode_failed": i["decode_failed"],
                "samples_per_second": i["samples_per_second"],
                "model_load_seconds": i["seconds"]["model_load"],
                "embedding_seconds": i["seconds"]["embedding"],
            }
            for i in infos
        ],
    }
    return summary, similarities


def _model_title(summary: dict) -> str:
    provenance = summary["provenance"] or {}
    weights = "RANDOM WEIGHTS" if provenance.get("random_weights") else provenance.get("pretrained") or "checkpoint"
    return f"{provenance.get('model')} ({weights}) on {provenance.get('device')}"


def _pyplot():
    """matplotlib, imported by the plots only: the download and curation jobs import this module's similarities and
    run in environments without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(summary: dict, path) -> None:
    jobs = summary["jobs"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([j["chunk"] for j in jobs], [j["samples_per_second"] for j in jobs], color="tab:blue")
    ax.set_xlabel("job (first shard)")
    ax.set_ylabel("samples / s (image + text)")
    ax.set_title(f"Embedding throughput: {_model_title(summary)}")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_similarity(similarities: SimilarityHistogram, summary: dict, path) -> None:
    counts, edges = similarities.binned()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(edges[:-1], bins=edges, weights=counts, color="tab:purple")
    ax.set_xlabel("cosine similarity of image and caption embeddings")
    ax.set_ylabel("samples")
    ax.set_title(f"{similarities.total:,} samples: {_model_title(summary)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
