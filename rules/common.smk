from pathlib import Path

from snakemake.exceptions import WorkflowError

from clipflow.bulk import folder_url, listed_sizes
from clipflow.config import output_settings, validate_config
from clipflow.curate.filters import make_filter
from clipflow.embed import SHARD_FILES
from clipflow.embed.heads import RATINGS
from clipflow.errors import ClipflowError
from clipflow.evaluate import datacomp as datacomp_evaluation
from clipflow.index.builder import trained_rows, training_chunks
from clipflow.shards import SUFFIXES
from clipflow.train.hyperparameters import hyperparameters
from clipflow.workflow import consecutive, reopen_incomplete, workflow_plan

PLAN_DIR = "results/plan"
SHARDS_DIR = "results/shards"
DEMO_DIR = "results/demo"
EMBEDDINGS_DIR = "results/embeddings"
INDEX_DIR = "results/index"
TAKEDOWNS_DIR = "results/takedowns"
MODEL_MANIFEST = "results/model.json"
# One file each standing for every download batch's and every embedding chunk's record (see write_listing).
DOWNLOADED = "results/listings/batches.json"
EMBEDDED = "results/listings/chunks.json"
INDEX_TRAINING = "results/listings/index_training.json"  # the chunks the index trains on
CURATE_DIR = "results/curate"
AESTHETIC_DIR = f"{CURATE_DIR}/aesthetic_embeddings"
SUBSETS_DIR = f"{CURATE_DIR}/subsets"
NEAR_DUPLICATES_DIR = f"{CURATE_DIR}/near_duplicates"
TRAIN_DIR = "results/train"
EVALUATE_DIR = "results/evaluate"
HOLDOUT_DIR = f"{EVALUATE_DIR}/holdout"
HOLDOUT_FILES = ["dataset_type.txt", "test/nshards.txt", "test/0.tar", "samples.parquet"]
BENCHMARKS_DIR = "benchmarks"


wildcard_constraints:
    batch=r"\d{8}",
    chunk=r"\d{8}",
    modality="image|text",
    filter=r"[A-Za-z0-9_-]+",
    group=r"\d+",
    subset=r"[A-Za-z0-9_-]+",


def checked(step, *args):
    """A package step run while the workflow is parsed: a ClipflowError stops it with the message alone."""
    try:
        return step(*args)
    except ClipflowError as error:
        raise WorkflowError(str(error)) from None


checked(validate_config, config)
TRAINING = checked(hyperparameters, config["train"])
# A training job over several nodes is one SLURM job of as many tasks, its script launching them with srun (the
# SLURM plugins' "mpi" jobs): SLURM allocates the nodes, the first runs the script. gpu is then the job's total;
# tasks_per_gpu 0 keeps the plugin from asking --ntasks-per-gpu of the tasks.
TRAIN_NODES = (
    {
        "nodes": config["train"]["nodes"],
        "tasks": config["train"]["nodes"],
        "tasks_per_gpu": 0,
        "mpi": "srun",
    }
    if config["train"]["nodes"] > 1
    else {}
)
# A suite's missing evaluation sets stop the workflow before anything trains or evaluates.
if config["train"]["subsets"] and config["evaluate"]["suite"] == "datacomp":
    checked(datacomp_evaluation.check_sets, config["evaluate"]["data_dir"])
# A dry run (-n) and --lint change nothing on disk. Snakemake's linter is told apart by its parse without
# the environment-variable check (no API says "lint").
READ_ONLY = workflow.output_settings.dryrun or not workflow.check_envvars
PLAN = checked(workflow_plan, config, PLAN_DIR, DEMO_DIR, workflow.is_main_process, READ_ONLY)
# A dry run before the first run plans in a temporary folder. Otherwise the rules name results/plan, as the
# runs before did (a new path would rerun every job).
if not Path(PLAN_DIR, "state.json").exists():
    PLAN_DIR = str(PLAN.folder)
# Downloads and embeddings run a job per batch or chunk of consecutive shards: the DAG stays small
# at scale, and an embedding job loads the model once for many shards.
BATCHES = consecutive(PLAN.shards, config["download"]["shards_per_job"])
CHUNKS = consecutive(PLAN.shards, config["embed"]["shards_per_job"])
# The index is trained for the planned pool's size, on its first chunks: growing the pool keeps that training
# until it outgrows it by index.retrain_growth (see clipflow.index.builder).
SHARD_ROWS = {shard["shard"]: shard["rows"] for shard in PLAN.state["shards"]}
TRAINED_ROWS = trained_rows(sum(SHARD_ROWS.values()), config["index"])
INDEX_TRAINING_CHUNKS = training_chunks(
    {chunk: sum(SHARD_ROWS[shard] for shard in shards) for chunk, shards in CHUNKS.items()},
    TRAINED_ROWS,
)


def batch_record(batch):
    return f"{SHARDS_DIR}/batches/{batch}.json"


def chunk_record(chunk):
    return f"{EMBEDDINGS_DIR}/info/{chunk}.json"


def index_records():
    """Each record of the index folder, with the files it lists (relative to INDEX_DIR)."""
    records = {f"{INDEX_DIR}/metadata.infos.json": ["metadata.arrow", "model.json"]}
    for modality in ("image", "text"):
        records[f"{INDEX_DIR}/{modality}.infos.json"] = [
            f"{modality}.index",
            f"{modality}.ivfdata",
        ]
        records[f"{INDEX_DIR}/{modality}/trained.json"] = [f"{modality}/trained.index"]
        for chunk in CHUNKS:
            records[f"{INDEX_DIR}/{modality}/parts/{chunk}.json"] = [
                f"{modality}/parts/{chunk}.index"
            ]
    if config["blocklist"]:
        records[f"{INDEX_DIR}/takedowns.infos.json"] = ["takedowns.npy"]
    return records


def blocklist_files():
    """The blocklist's files: a changed one takes down its rows again."""
    return [entry if isinstance(entry, str) else entry["path"] for entry in config["blocklist"]]


def shard_embeddings(kind, shards):
    return [f"{EMBEDDINGS_DIR}/{SHARD_FILES[kind].format(shard=shard)}" for shard in shards]


# A job's record stands for files written beside it: where one is gone, the record goes, and the job runs again.
# A dry run keeps the record and gives the job a `repair` param naming what is wrong: Snakemake lists the job
# for its changed params, and a real run's `repair` is always "" (it removes the record instead).
# With storage.bulk the shards' and embeddings' files are looked up in one listing of each folder there.
BULK = config["storage"]["bulk"]
REOPENED = {}
if workflow.is_main_process:
    BULK_SIZES = checked(listed_sizes, BULK, [SHARDS_DIR, EMBEDDINGS_DIR]) if BULK else None
    REOPENED.update(
        reopen_incomplete(
            {
                batch_record(batch): [
                    f"{SHARDS_DIR}/{shard}{suffix}" for shard in shards for suffix in SUFFIXES
                ]
                for batch, shards in BATCHES.items()
            },
            remove=not READ_ONLY,
            bulk=(folder_url(BULK, SHARDS_DIR), BULK_SIZES) if BULK else None,
        )
    )
    REOPENED.update(
        reopen_incomplete(
            {
                chunk_record(chunk): sum(
                    (shard_embeddings(kind, shards) for kind in SHARD_FILES), []
                )
                for chunk, shards in CHUNKS.items()
            },
            remove=not READ_ONLY,
            bulk=(folder_url(BULK, EMBEDDINGS_DIR), BULK_SIZES) if BULK else None,
        )
    )
    # The index's files, each listed with its size in a record beside it.
    REOPENED.update(
        reopen_incomplete(
            {
                record: [f"{INDEX_DIR}/{name}" for name in names]
                for record, names in index_records().items()
            },
            beside=True,
            remove=not READ_ONLY,
        )
    )


DAMAGED = REOPENED if READ_ONLY else {}


def repair(record):
    """What a dry run found missing or damaged among the files of the job whose record this is ("" if none)."""
    return lambda wildcards: DAMAGED.get(record.format(**wildcards), "")


def settings(name):
    """The settings of a config section that change what its rules write (see clipflow.config.SIZING)."""
    return output_settings(config, name)


def demo_images(wildcards):
    return [f"{DEMO_DIR}/site/images"] if config["demo"]["enabled"] else []


def all_batch_records():
    return [batch_record(batch) for batch in BATCHES]


def download_subset(wildcards):
    """With download.subset, the subset's left-out rows: a download job skips them."""
    subset = config["download"]["subset"]
    return {"subset": f"{SUBSETS_DIR}/{subset}/removed.parquet"} if subset else {}


def pool_downloads(wildcards):
    """The downloads that curation waits for: none when the embeddings are precomputed (the pool is then made
    from metadata alone, so that a subset can choose what to download)."""
    return {} if config["embed"]["precomputed"] else {"batches": DOWNLOADED}


def chunk_batch_records(wildcards):
    shards = CHUNKS[wildcards.chunk]
    return [batch_record(batch) for batch in shards[:: config["download"]["shards_per_job"]]]


def chunk_tars(wildcards):
    return [f"{SHARDS_DIR}/{shard}.tar" for shard in CHUNKS[wildcards.chunk]]


def all_chunk_records():
    return [chunk_record(chunk) for chunk in CHUNKS]


def index_training_records(wildcards):
    return [chunk_record(chunk) for chunk in INDEX_TRAINING_CHUNKS]


def index_training_options():
    """What the trained index depends on besides its rows (not the query-time budget, which only the merge uses)."""
    return {
        key: config["index"][key]
        for key in ("metric", "max_index_memory_usage", "max_train_vectors")
    }


def configured_filter(wildcards):
    return make_filter(config["curate"]["filters"][wildcards.filter])


def filter_modality(wildcards):
    """The embeddings a filter reads besides the pool: "image", "text" or None (most kinds)."""
    return configured_filter(wildcards).embeddings()


def filter_assets(wildcards):
    """Local files a filter reads (vocabulary, language model, centroids): a changed file reruns it."""
    return configured_filter(wildcards).assets()


def filter_embeddings(wildcards):
    """What a filter reads besides the pool: the embeddings, or the result of its own jobs (runs_as_jobs)."""
    if configured_filter(wildcards).runs_as_jobs:
        return {"prepared": f"{NEAR_DUPLICATES_DIR}/{wildcards.filter}/duplicate_of.npy"}
    return {"chunks": EMBEDDED} if filter_modality(wildcards) else {}


def near_duplicate_options(wildcards):
    return config["curate"]["filters"][wildcards.filter]


def near_duplicate_clustering(wildcards):
    """The options that shape the clusters (not the threshold, which only the pairs and what follows use)."""
    options = near_duplicate_options(wildcards)
    return {key: options[key] for key in ("modality", "rows_per_cluster", "max_clusters", "seed")}


def near_duplicate_pairs(wildcards):
    """Every cluster group's pairs and their row-range bounds, group by group."""
    groups = range(config["curate"]["near_duplicates"]["cluster_groups"])
    folder = f"{NEAR_DUPLICATES_DIR}/{wildcards.filter}/pairs"
    return {
        "pairs": [f"{folder}/{group}.npy" for group in groups],
        "bounds": [f"{folder}/{group}.bounds.npy" for group in groups],
    }


def score_models(wildcards):
    """The configured score heads' weight files, named by their curate.scores key: inputs of the pool, so
    that new weights rescore it."""
    return {key: path for key, path in config["curate"]["scores"].items() if path}


def subset_filter_outputs(wildcards, extension):
    names = config["curate"]["subsets"][wildcards.subset]["filters"]
    return expand(f"{CURATE_DIR}/filters/{{name}}.{extension}", name=names)


def pool_takedowns(wildcards):
    """With a blocklist, the pool's takedowns: every subset leaves them out first."""
    return {"takedowns": f"{TAKEDOWNS_DIR}/pool.parquet"} if config["blocklist"] else {}


def held_out_rows(wildcards):
    """While any subset trains, the evaluation's held-out rows: every subset leaves them out."""
    return {"held_out": f"{EVALUATE_DIR}/held_out.parquet"} if config["train"]["subsets"] else {}


def model_config_file(wildcards):
    path = config["train"]["model_config"]
    return {"model_config": path} if path else {}


def reshard_record(wildcards):
    return f"{SUBSETS_DIR}/{wildcards.subset}/shards/reshard.json"


def evaluation_outputs():
    subsets = config["train"]["subsets"]
    if not subsets:
        return []
    return expand(
        f"{TRAIN_DIR}/{{subset}}/{{name}}",
        subset=subsets,
        name=["checkpoint.pt", "provenance.json"],
    ) + [
        f"{EVALUATE_DIR}/compare.tsv",
        f"{EVALUATE_DIR}/compare.png",
    ]


def benchmarks():
    """Measured time and peak memory of every heavy job, for sizing mem_mb and runtime."""
    return (
        expand(f"{BENCHMARKS_DIR}/download/{{batch}}.tsv", batch=BATCHES)
        + expand(f"{BENCHMARKS_DIR}/embed/{{chunk}}.tsv", chunk=CHUNKS)
        + expand(
            f"{BENCHMARKS_DIR}/{{step}}/{{modality}}.tsv",
            step=["index_train", "index_merge"],
            modality=["image", "text"],
        )
        + expand(
            f"{BENCHMARKS_DIR}/index_add/{{modality}}_{{chunk}}.tsv",
            modality=["image", "text"],
            chunk=CHUNKS,
        )
        + expand(f"{BENCHMARKS_DIR}/curate/filter_{{name}}.tsv", name=config["curate"]["filters"])
        + expand(f"{BENCHMARKS_DIR}/curate/reshard_{{subset}}.tsv", subset=resharded_subsets())
        + expand(
            f"{BENCHMARKS_DIR}/{{step}}/{{subset}}.tsv",
            step=["train", "evaluate"],
            subset=config["train"]["subsets"],
        )
    )


def resharded_subsets():
    return [name for name, spec in config["curate"]["subsets"].items() if spec["reshard"]]


def curation_outputs():
    files = expand(
        f"{SUBSETS_DIR}/{{subset}}/{{name}}",
        subset=config["curate"]["subsets"],
        name=["uids.npy", "kept.parquet", "summary.json"],
    )
    aesthetic = (
        expand(f"{AESTHETIC_DIR}/rating{{rating}}.npy", rating=RATINGS)
        if config["curate"]["scores"]["aesthetic_model"]
        else []
    )
    return (
        files
        + expand(f"{SUBSETS_DIR}/{{subset}}/shards/reshard.json", subset=resharded_subsets())
        + aesthetic
    )


def get_final_outputs():
    # Batch and chunk records are asked for directly: Snakemake 9 does not rebuild a deleted
    # intermediate whose consumers are up to date.
    index = expand(
        f"{INDEX_DIR}/{{name}}",
        name=[
            "image.index",
            "text.index",
            "metadata.arrow",
            "model.json",
            "image.vectors.json",
            "text.vectors.json",
        ],
    )
    if config["blocklist"]:
        index += [f"{INDEX_DIR}/takedowns.npy", f"{TAKEDOWNS_DIR}/audit.json"]
    summaries = expand(
        "results/summary/{name}",
        name=["download.json", "download.png", "embeddings.json", "benchmarks.png"],
    )
    return [
        *all_batch_records(),
        *all_chunk_records(),
        DOWNLOADED,
        EMBEDDED,
        *index,
        *index_records(),  # a record removed at the start of a run rebuilds what it lists
        *summaries,
        *curation_outputs(),
        *evaluation_outputs(),
    ]
