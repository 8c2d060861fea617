"""Embedding summary and plots for the Snakemake report."""

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def pair_similarities(image_paths, text_paths) -> np.ndarray:
    """Cosine similarity of each row's image and text embedding (both are L2-normalized)."""
    parts = [
        np.einsum("ij,ij->i", np.load(i).astype(np.float32), np.load(t).astype(np.float32))
        for i, t in zip(image_paths, text_paths)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.float32)


def summarize_embeddings(info_paths, image_paths, text_paths) -> dict:
    infos = [json.loads(Path(p).read_text()) for p in info_paths]
    similarities = pair_similarities(image_paths, text_paths)
    return {
        "provenance": infos[0]["provenance"] if infos else None,
        "embedded": sum(i["embedded"] for i in infos),
        "decode_failed": sum(i["decode_failed"] for i in infos),
        "image_text_similarity": {
            "mean": float(similarities.mean()) if len(similarities) else None,
            "quantiles": (
                {q: float(np.quantile(similarities, q)) for q in (0.05, 0.5, 0.95)} if len(similarities) else {}
            ),
        },
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


def _model_title(summary: dict) -> str:
    provenance = summary["provenance"] or {}
    weights = "RANDOM WEIGHTS" if provenance.get("random_weights") else provenance.get("pretrained") or "checkpoint"
    return f"{provenance.get('model')} ({weights}) on {provenance.get('device')}"


def plot_throughput(summary: dict, path) -> None:
    jobs = summary["jobs"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([j["chunk"] for j in jobs], [j["samples_per_second"] for j in jobs], color="tab:blue")
    ax.set_xlabel("job (first shard)")
    ax.set_ylabel("samples / s (image + text)")
    ax.set_title(f"Embedding throughput: {_model_title(summary)}")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_similarity(image_paths, text_paths, summary: dict, path) -> None:
    similarities = pair_similarities(image_paths, text_paths)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(similarities, bins=50, color="tab:purple")
    ax.set_xlabel("cosine similarity of image and caption embeddings")
    ax.set_ylabel("samples")
    ax.set_title(f"{len(similarities):,} samples: {_model_title(summary)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
