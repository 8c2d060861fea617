"""The heavy jobs' measured time and peak memory, from Snakemake's benchmark files, for the report."""

from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def read_benchmarks(paths) -> pd.DataFrame:
    """One row per job: step (the benchmark file's folder), job (its name), seconds and max_rss_mb."""
    rows = []
    for path in map(Path, paths):
        measured = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "step": path.parent.name,
                "job": path.stem,
                "seconds": float(measured["s"].iloc[-1]),
                "max_rss_mb": float(pd.to_numeric(measured["max_rss"], errors="coerce").iloc[-1]),
            }
        )
    return pd.DataFrame(rows, columns=["step", "job", "seconds", "max_rss_mb"])


def plot_benchmarks(table: pd.DataFrame, path) -> None:
    """Per step, each job's time and peak memory: the largest job is what mem_mb and runtime must cover."""
    steps = sorted(table["step"].unique())
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 1.5 + 0.5 * max(1, len(steps))))
    for ax, column, label in (
        (time_ax, "seconds", "seconds per job"),
        (memory_ax, "max_rss_mb", "peak RSS per job (MB)"),
    ):
        for row, step in enumerate(steps):
            values = table.loc[table["step"] == step, column]
            ax.scatter(values, [row] * len(values), alpha=0.6)
            ax.annotate(f"max {values.max():,.0f}", (values.max(), row), textcoords="offset points", xytext=(5, 5))
        ax.set_yticks(range(len(steps)), steps)
        ax.set_xlabel(label)
    time_ax.set_title(f"{len(table)} jobs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
