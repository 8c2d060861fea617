from pathlib import Path

from clipflow import files
from clipflow.curate.reshard import reshard
from clipflow.logs import redirect_to_log
from clipflow.shards import listed_folder

with redirect_to_log(snakemake.log[0]):
    folder = Path(snakemake.output.record).parent
    shards_folder = listed_folder(snakemake.input.batches)
    record = reshard(snakemake.input.kept, shards_folder, folder, snakemake.params.samples_per_shard, snakemake.threads)
    files.write_json(snakemake.output.record, record)
