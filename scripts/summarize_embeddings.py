import json
from pathlib import Path

from clipflow.logs import redirect_to_log
from clipflow.reporting import plot_similarity, plot_throughput, summarize_embeddings

with redirect_to_log(snakemake.log[0]):
    summary = summarize_embeddings(snakemake.input.infos, snakemake.input.image, snakemake.input.text)
    Path(snakemake.output.summary).write_text(json.dumps(summary, indent=1))
    plot_throughput(summary, snakemake.output.throughput)
    plot_similarity(snakemake.input.image, snakemake.input.text, summary, snakemake.output.similarity)
