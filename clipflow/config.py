"""The workflow configuration: its schema (each curation filter kind adds its options), loading with the
defaults filled in, the checks across keys, and which settings change what a rule writes.

The Snakefile and `clipflow plan` both go through `validate_config`, so they accept and refuse the same.
"""

import copy
from pathlib import Path

import jsonschema
import yaml

from clipflow.errors import ClipflowError
from clipflow.shards import SIZE_COLUMNS

SCHEMA_FILE = Path(__file__).parent / "schemas" / "config.schema.yaml"

# Settings that only size or schedule work. Rules get them through `threads:` and `resources:` or read them
# at run time, never as params, so changing one reruns nothing.
SIZING = {
    "plan": ("processes",),
    "download": ("threads", "mem_mb"),
    "embed": ("device", "batch_size", "workers", "mem_mb", "cache_dir"),
    "index": ("mem_mb", "part_mem_mb"),
    "curate": ("mem_mb",),
    "curate.reshard": ("processes", "mem_mb"),
    "curate.near_duplicates": ("mem_mb",),
    "train": ("gpus", "nodes", "workers", "mem_mb", "runtime"),
    "evaluate": ("batch_size", "mem_mb"),
    "storage": ("cache_gb",),
}
# Settings that group shards into jobs: changing one regroups those jobs, which then run again.
GROUPING = {
    "download": ("shards_per_job",),
    "embed": ("shards_per_job",),
    "curate.near_duplicates": ("cluster_groups",),
}
# Settings added after the first release, at the values that do what the workflow did before they existed: left
# out of the rules' params there, so that a finished run, upgraded, reruns nothing.
NEUTRAL = {"download": {"resize_only_if_bigger": False, "bbox_col": None, "subset": None}}


def schema() -> dict:
    from clipflow.curate.filters import options_schema

    full = yaml.safe_load(SCHEMA_FILE.read_text())
    full["properties"]["curate"]["properties"]["filters"]["additionalProperties"] = options_schema()
    return full


def _with_defaults(validator_class):
    """A validator that fills in each missing property's default before descending into it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, property_schema in properties.items():
                if "default" in property_schema:
                    instance.setdefault(name, copy.deepcopy(property_schema["default"]))
        yield from validate_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict) -> dict:
    """Check `config` against the schema and across keys, filling in defaults (in place); a mistake is a
    ClipflowError that names the key."""
    full = schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(full)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "the top level"
        raise ClipflowError(f"config: {where}: {error.message}")
    check_across_keys(config)
    return config


# Columns that img2dataset writes into each sample itself; it refuses them as additional columns.
DOWNLOAD_COLUMNS = (
    "key", "caption", "url", "width", "height", "original_width", "original_height",
    "status", "error_message", "exif", "md5", "sha256", "sha512",
)  # fmt: skip


def check_across_keys(config: dict) -> None:
    from clipflow.curate.filters import make_filter

    keep_cols = config["input"]["keep_cols"]
    reserved = [column for column in keep_cols if column in DOWNLOAD_COLUMNS]
    if reserved:
        raise ClipflowError(
            f"input.keep_cols: {reserved} are written by the download itself (img2dataset reserves "
            f"{', '.join(DOWNLOAD_COLUMNS)}): remove them from keep_cols; the shards' parquet holds each image's "
            "own original size and sha256"
        )
    bbox_col = config["download"]["bbox_col"]
    if bbox_col and bbox_col not in keep_cols:
        raise ClipflowError(
            f"download.bbox_col ({bbox_col!r}) must be one of input.keep_cols ({keep_cols}): the boxes travel "
            "with each row to the download, and into the samples' json, as with img2dataset"
        )
    per_download, per_embed = (config[step]["shards_per_job"] for step in ("download", "embed"))
    if per_embed % per_download:
        raise ClipflowError(
            f"embed.shards_per_job ({per_embed}) must be a multiple of download.shards_per_job "
            f"({per_download}): an embedding job takes whole download batches"
        )
    metadata_cols = config["input"]["metadata_cols"]
    both = sorted(set(keep_cols) & set(metadata_cols))
    if both:
        raise ClipflowError(f"input.metadata_cols: {both} are in input.keep_cols too; name each column once")
    precomputed = bool(config["embed"]["precomputed"])
    filters = config["curate"]["filters"]
    for name, options in filters.items():
        wanted = make_filter(options).metadata_columns()
        available = {*keep_cols, *metadata_cols, *(() if precomputed else SIZE_COLUMNS)}
        missing = [column for column in wanted if column not in available]
        if missing:
            why = " (with embed.precomputed the pool is made before any download)" if precomputed else ""
            raise ClipflowError(
                f"curate.filters.{name} ({options['kind']}) reads {missing}, which the pool does not have{why}: "
                "add them to input.metadata_cols"
            )
        needs = make_filter(options).score_model
        if needs and not config["curate"]["scores"][needs]:
            raise ClipflowError(
                f"curate.filters.{name} ({options['kind']}) reads a score that no head computes: "
                f"set curate.scores.{needs} to the model's weight file"
            )
    for subset, spec in config["curate"]["subsets"].items():
        unknown = [name for name in spec["filters"] if name not in filters]
        if unknown:
            raise ClipflowError(
                f"curate.subsets.{subset}.filters names {unknown}, not in curate.filters ({sorted(filters)})"
            )
    subset = config["download"]["subset"]
    if subset and subset not in config["curate"]["subsets"]:
        raise ClipflowError(
            f"download.subset names {subset!r}, not in curate.subsets ({sorted(config['curate']['subsets'])})"
        )
    check_training(config)
    if subset and not precomputed:
        raise ClipflowError(
            "download.subset needs embed.precomputed: a subset is chosen before the download only from embeddings "
            "that come with the metadata (DataComp's .npz)"
        )


def check_training(config: dict) -> None:
    from clipflow.evaluate.holdout import HELD_OUT

    subsets = config["curate"]["subsets"]
    for name in config["train"]["subsets"]:
        if name not in subsets:
            raise ClipflowError(f"train.subsets names {name!r}, not in curate.subsets ({sorted(subsets)})")
        if not subsets[name]["reshard"]:
            raise ClipflowError(
                f"train.subsets: {name!r} needs reshard: true in curate.subsets.{name} (training reads its shards)"
            )
    if config["train"]["subsets"] and HELD_OUT in config["curate"]["filters"]:
        raise ClipflowError(f"curate.filters: {HELD_OUT!r} names the evaluation's held-out slice; rename the filter")
    model_config = config["train"]["model_config"]
    if model_config and config["train"]["model"] != Path(model_config).stem:
        raise ClipflowError(
            f"train.model_config: open_clip names the model in {model_config} {Path(model_config).stem!r}: set "
            "train.model to that name"
        )


def load_config(path: Path | str) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    return validate_config(config)


def section(config: dict, name: str) -> dict:
    for part in name.split("."):
        config = config[part]
    return config


def output_settings(config: dict, name: str) -> dict:
    """The settings of section `name` that change what its rules write: everything but sizing and grouping, and
    but the settings at their NEUTRAL values."""
    left_out = set(SIZING.get(name, ())) | set(GROUPING.get(name, ()))
    neutral = NEUTRAL.get(name, {})
    return {
        key: value
        for key, value in section(config, name).items()
        if key not in left_out and not (key in neutral and value == neutral[key])
    }
