"""The download tool: img2dataset, called on one plan shard. Swapping the tool means replacing this module.

Its contract: `fetch_shard` writes one complete shard (clipflow.shards' format) for the rows of a plan shard
into an empty staging folder; `clipflow.download.batch` moves it into place.
"""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

# img2dataset imports albumentations, which otherwise asks PyPI for a newer version at every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import img2dataset  # noqa: E402

from clipflow.shards import shard_name, stats_path  # noqa: E402


def fetch_shard(plan_shard: Path, staging: Path, options: dict, kept_columns: list[str], threads: int) -> None:
    shard = plan_shard.stem
    # img2dataset numbers its shards from 0; in "extend" mode it continues after the highest existing
    # stats file, which makes it write this shard under its planned id, with globally unique keys.
    if int(shard) > 0:
        placeholder = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
        placeholder.update(start_time=0, end_time=0, status_dict={})
        stats_path(staging, shard_name(int(shard) - 1)).write_text(json.dumps(placeholder))
    img2dataset.download(
        url_list=str(plan_shard),
        input_format="parquet",
        output_format="webdataset",
        output_folder=str(staging),
        url_col="url",
        caption_col="caption",
        save_additional_columns=["uid", *kept_columns],
        number_sample_per_shard=max(1, pq.ParquetFile(plan_shard).metadata.num_rows),
        oom_shard_count=len(shard),
        incremental_mode="extend",
        image_size=options["image_size"],
        resize_mode=options["resize_mode"],
        encode_quality=options["encode_quality"],
        thread_count=threads,
        timeout=options["timeout"],
        retries=options["retries"],
        user_agent_token=options["user_agent_token"],
        disallowed_header_directives=options["disallowed_header_directives"],
    )
