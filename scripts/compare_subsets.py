import json
from pathlib import Path

from clipflow.evaluate.benchmark import comparison
from clipflow.evaluate.plots import plot_comparison
from clipflow.logs import redirect_to_log

with redirect_to_log(snakemake.log[0]):
    subsets = snakemake.config["train"]["subsets"]
    provenances = {name: json.loads(Path(path).read_text()) for name, path in zip(subsets, snakemake.input.provenance)}
    scores = {name: json.loads(Path(path).read_text()) for name, path in zip(subsets, snakemake.input.scores)}
    table = comparison(provenances, scores)
    table.to_csv(snakemake.output.table, sep="\t", index=False)
    plot_comparison(table, snakemake.output.plot)
