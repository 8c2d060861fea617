"""The report's comparison of trained subsets: every score of every subset, side by side."""

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

SCORE_SEPARATOR = "/"  # score columns are "<task>/<metric>"
# clip_benchmark's names: image retrieval finds the image from its caption
SHORT_NAMES = {"image_retrieval_recall@": "text→image R@", "text_retrieval_recall@": "image→text R@"}


def label(column: str) -> str:
    task, metric = column.split(SCORE_SEPARATOR, 1)
    for name, short in SHORT_NAMES.items():
        metric = metric.replace(name, short)
    return f"{metric}\n{task}"


def plot_comparison(table: pd.DataFrame, path) -> None:
    """Grouped bars: one group per score, one bar per subset (labelled with its size)."""
    scores = [column for column in table.columns if SCORE_SEPARATOR in column]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(scores) * max(1, len(table)) * 0.5), 4.5))
    width = 0.8 / max(1, len(table))
    for offset, (_, row) in enumerate(table.iterrows()):
        positions = np.arange(len(scores)) + (offset - (len(table) - 1) / 2) * width
        ax.bar(
            positions, row[scores].to_numpy(float), width=width, label=f"{row['subset']} ({row['samples']:,} samples)"
        )
    ax.set_xticks(np.arange(len(scores)), [label(column) for column in scores], fontsize=7)
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
