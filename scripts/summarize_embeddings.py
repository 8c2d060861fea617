from clipflow import files
from clipflow.bulk import job_cache
from clipflow.embed import embedding_files
from clipflow.shards import listed, listed_shards
from clipflow.embed.summary import plot_similarity, plot_throughput, summarize_embeddings
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    folder, shards = listed_shards(snakemake.input.chunks)  # the embeddings folder, the pool's shards
    image, text = (embedding_files(folder, shards, kind) for kind in ("image", "text"))
    records = listed(snakemake.input.chunks)
    with job_cache(records, snakemake.config) as cache:
        summary, similarities = summarize_embeddings(records, image, text, cache)
    files.write_json(snakemake.output.summary, summary)
    plot_throughput(summary, snakemake.output.throughput)
    plot_similarity(similarities, summary, snakemake.output.similarity)
