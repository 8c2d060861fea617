from clipflow import files
from clipflow.embed.summary import plot_similarity, plot_throughput, summarize_embeddings
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    summary = summarize_embeddings(snakemake.input.chunks, snakemake.params.image, snakemake.params.text)
    files.write_json(snakemake.output.summary, summary)
    plot_throughput(summary, snakemake.output.throughput)
    plot_similarity(snakemake.params.image, snakemake.params.text, summary, snakemake.output.similarity)
