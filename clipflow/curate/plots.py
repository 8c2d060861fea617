"""Curation plots for the Snakemake report: filter effects, the score cut, kept and removed examples."""

import io
import textwrap

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def plot_filter_effects(summary: dict, path) -> None:
    """Rows each filter removes alone, as the only filter, and in the listed order."""
    names = list(summary["filters"])
    measures = {"alone": "removed_alone", "only by this filter": "removed_only_by_it", "in order": "removed_in_order"}
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.8 * len(names)))
    for offset, (label, field) in enumerate(measures.items()):
        positions = np.arange(len(names)) + (offset - 1) * 0.27
        ax.barh(positions, [summary["filters"][n][field] for n in names], height=0.27, label=label)
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"rows removed (of {summary['pool']:,}; {summary['kept']:,} kept by all)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_score_cut(histogram: dict, thresholds: dict, path) -> None:
    """The pool's image-text similarity (`histogram`: bin edges, kept and removed rows per bin), kept and removed
    rows stacked, with each clip_score cut."""
    fig, ax = plt.subplots(figsize=(8, 4))
    edges = np.asarray(histogram["edges"])
    centres = [edges[:-1], edges[:-1]]
    ax.hist(
        centres,
        bins=edges,
        weights=[histogram["kept"], histogram["removed"]],
        stacked=True,
        color=["tab:green", "tab:gray"],
    )
    ax.legend(["kept", "removed"])
    for name, threshold in thresholds.items():
        ax.axvline(threshold, color="tab:red", linestyle="--")
        ax.annotate(f"{name} >= {threshold:.3f}", (threshold, ax.get_ylim()[1] * 0.9), color="tab:red")
    ax.set_xlabel("cosine similarity of image and caption embeddings")
    ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_examples(examples: list[tuple], path, columns: int = 6) -> None:
    """A grid of (title, image bytes, caption) examples, e.g. kept rows then removed rows with the reason."""
    from PIL import Image

    rows = max(1, -(-len(examples) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not examples:
        fig.text(0.5, 0.5, "no images: the subset was chosen from metadata, before any download", ha="center")
    for ax, (title, image, caption) in zip(axes.flat, examples):
        ax.imshow(Image.open(io.BytesIO(image)).convert("RGB"))
        ax.set_title(f"{title}\n{textwrap.shorten(str(caption), 60)}", fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
