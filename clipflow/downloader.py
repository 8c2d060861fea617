"""Download planned shards with img2dataset into NNNNNNNN.tar, .parquet and _stats.json.

img2dataset writes into a staging folder; the files move into place only when it has finished, the
stats file last, so a killed download never leaves a shard that looks complete. One job downloads a
batch of shards (fewer, larger jobs keep Snakemake's DAG small at scale) and skips shards already
complete, so rerunning a batch downloads only its missing or failed shards.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

# img2dataset imports albumentations, which otherwise asks PyPI for a newer version at every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import img2dataset  # noqa: E402

from clipflow.errors import ClipflowError
from clipflow.planner import SHARD_DIGITS, SHARD_FILE_SUFFIXES

log = logging.getLogger(__name__)


def shard_is_complete(output_folder: Path | str, shard: str) -> bool:
    return all((Path(output_folder) / f"{shard}{suffix}").exists() for suffix in SHARD_FILE_SUFFIXES)


def download_batch(
    plan_shards: list[Path | str], output_folder: Path | str, options: dict, kept_columns: list[str], record: Path | str
) -> None:
    """Download each plan shard not yet complete, then write `record`, the batch's proof of completion.

    A shard that fails does not stop the others; the batch fails at the end, naming it, and a rerun
    downloads only what is still missing.
    """
    failed, shards = {}, []
    for plan_shard in map(Path, plan_shards):
        shard = plan_shard.stem
        if shard_is_complete(output_folder, shard):
            log.info("shard %s is complete, kept", shard)
            shards.append({"shard": shard, "downloaded_now": False})
            continue
        try:
            download_shard(plan_shard, output_folder, options, kept_columns)
        except Exception as error:  # whatever broke this shard, the rest of the batch goes on
            log.exception("shard %s failed", shard)
            failed[shard] = f"{type(error).__name__}: {error}"
            continue
        shards.append({"shard": shard, "downloaded_now": True})
    if failed:
        raise ClipflowError(f"{len(failed)} of {len(plan_shards)} shards failed, rerun to retry them: {failed}")
    Path(record).write_text(json.dumps({"shards": shards}, indent=1))


def download_shard(plan_shard: Path | str, output_folder: Path | str, options: dict, kept_columns: list[str]) -> Path:
    """Download the rows of one plan shard (a parquet named after its shard id); returns the stats path."""
    plan_shard, output_folder = Path(plan_shard), Path(output_folder)
    shard = plan_shard.stem
    staging = output_folder / ".staging" / shard
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # img2dataset numbers its shards from 0; in "extend" mode it continues after the highest existing
    # stats file, which makes it write this shard under its planned id, with globally unique keys.
    if int(shard) > 0:
        placeholder = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
        placeholder.update(start_time=0, end_time=0, status_dict={})
        (staging / f"{int(shard) - 1:0{SHARD_DIGITS}d}_stats.json").write_text(json.dumps(placeholder))
    img2dataset.download(
        url_list=str(plan_shard),
        input_format="parquet",
        output_format="webdataset",
        output_folder=str(staging),
        url_col="url",
        caption_col="caption",
        save_additional_columns=["uid", *kept_columns],
        number_sample_per_shard=max(1, _row_count(plan_shard)),
        oom_shard_count=SHARD_DIGITS,
        incremental_mode="extend",
        image_size=options["image_size"],
        resize_mode=options["resize_mode"],
        encode_quality=options["encode_quality"],
        thread_count=options["threads"],
        timeout=options["timeout"],
        retries=options["retries"],
        user_agent_token=options["user_agent_token"],
        disallowed_header_directives=options["disallowed_header_directives"],
    )
    produced = [staging / f"{shard}{suffix}" for suffix in SHARD_FILE_SUFFIXES]
    missing = [path.name for path in produced if not path.exists()]
    if missing:
        raise ClipflowError(f"{plan_shard}: img2dataset finished without writing {missing}; see the log above")
    for path in produced:
        os.replace(path, output_folder / path.name)
    shutil.rmtree(staging)
    return output_folder / f"{shard}_stats.json"


def _row_count(plan_shard: Path) -> int:
    return pq.ParquetFile(plan_shard).metadata.num_rows
