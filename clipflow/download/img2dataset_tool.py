"""The download tool: img2dataset's downloader, run in this process on one plan shard. Swapping the tool means
replacing this module.

Its contract: `fetch_shard` writes one complete shard (clipflow.shards' format) for the rows of a plan shard
into an empty staging folder; `clipflow.download.batch` checks it and moves it into place.

`img2dataset.download()` would start a process pool and re-shard its input for every shard (~4 s each) and
keep our rules out of its worker processes. Its `Downloader` takes the input as an Arrow file and any resizer,
so this module builds one the way `download()` does, with our image check in front of its resizer
(`clipflow.download.images`) and our URL rules in the process's urllib opener (`clipflow.download.http`).
"""

import contextlib
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# img2dataset imports albumentations, which otherwise asks PyPI for a newer version at every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from img2dataset.blurrer import BoundingBoxBlurrer  # noqa: E402
from img2dataset.downloader import Downloader  # noqa: E402
from img2dataset.resizer import Resizer  # noqa: E402
from img2dataset.writer import WebDatasetSampleWriter  # noqa: E402

from clipflow import files, shards  # noqa: E402
from clipflow.download import http  # noqa: E402
from clipflow.download.accounting import failure_reason  # noqa: E402
from clipflow.download.images import CheckedResizer  # noqa: E402
from clipflow.ingest.urls import url_problems  # noqa: E402
from clipflow.progress import Progress  # noqa: E402
from clipflow.shards import FILTERED, NOT_FETCHED, plan_keys  # noqa: E402


def fetch_shard(
    plan_shard: Path,
    staging: Path,
    options: dict,
    kept_columns: list[str],
    threads: int,
    left_out: dict[str, str],
    progress: Progress,
) -> None:
    """Every row the tool answers is counted in `progress` (a failure by its reason). `left_out` maps the keys of rows
    not to fetch to the filter that removed them; rows whose URL is not fetched (a verbatim plan keeps them,
    clipflow.ingest.urls) are not fetched either. Both stay in the tool's input with an empty URL, so that every row
    keeps the key of its position (the key that precomputed embeddings gave it), and fail at once without a
    connection; their parquet rows then get status `filtered` or `not fetched`, with the filter or the URL's problem
    as their message."""
    shard = plan_shard.stem
    # img2dataset's reader order: additional columns, caption, url; samples' json and the parquet follow it.
    columns = ["uid", *kept_columns, "caption", "url"]
    rows = pq.read_table(plan_shard, columns=columns)
    keys = plan_keys(shard, rows.num_rows)
    urls = rows["url"].combine_chunks().cast(pa.string())
    not_fetched = {keys[row]: (NOT_FETCHED, problem) for row, problem in url_problems(urls).items()}
    not_fetched.update((key, (FILTERED, f"filtered out by {name}")) for key, name in left_out.items())  # first
    if not_fetched:
        skip = pa.array([key in not_fetched for key in keys])
        original_urls = dict(zip(keys, urls.to_pylist()))
        rows = rows.set_column(columns.index("url"), "url", pc.if_else(skip, pa.scalar("", pa.string()), urls))
    arrow_input = staging / f"{shard}.feather"  # the downloader deletes its input when done
    with pa.ipc.new_file(arrow_input, rows.schema) as writer:
        writer.write_table(rows)
    http.install(timeout=options["timeout"], deadline=options["deadline"])
    resizer = Resizer(
        image_size=options["image_size"],
        resize_mode=options["resize_mode"],
        resize_only_if_bigger=options.get("resize_only_if_bigger", False),  # (clipflow.config.NEUTRAL)
        encode_quality=options["encode_quality"],
        encode_format="jpg",
        blurrer=BoundingBoxBlurrer() if options.get("bbox_col") else None,
    )
    downloader = Downloader(
        sample_writer_class=lambda *args: _CountingWriter(progress, not_fetched, *args),
        resizer=CheckedResizer(resizer),
        thread_count=threads,
        save_caption=True,
        extract_exif=True,
        output_folder=str(staging),
        column_list=columns,
        timeout=options["timeout"],
        # keys are shard * 10**digits + row, digits from the shard's row count: the same as download() gives
        number_sample_per_shard=max(1, rows.num_rows),
        oom_shard_count=len(shard),
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format="jpg",
        retries=options["retries"],
        user_agent_token=options["user_agent_token"],
        disallowed_header_directives=options["disallowed_header_directives"] or None,
        blurring_bbox_col=options.get("bbox_col"),
    )
    with _output_kept():
        downloader.download_shard((int(shard), str(arrow_input)))
    if not_fetched:
        _mark_not_fetched(shards.rows_path(staging, shard), not_fetched, original_urls)


class _CountingWriter(WebDatasetSampleWriter):
    """img2dataset's webdataset writer, counting each row it is given (every row, failed or not, in the
    downloader's one loop) into a Progress; rows left unfetched on purpose are not failures."""

    def __init__(self, progress: Progress, not_fetched: dict, *args):
        super().__init__(*args)
        self.progress, self.not_fetched = progress, not_fetched

    def write(self, img_str, key, caption, meta):
        super().write(img_str, key, caption, meta)
        failed = meta["status"] != "success" and key not in self.not_fetched
        self.progress.add(1, {failure_reason(meta["status"], meta["error_message"]): 1} if failed else None)


def _mark_not_fetched(rows_path: Path, statuses: dict[str, tuple[str, str]], original_urls: dict[str, str]) -> None:
    """The rows of `statuses` (key -> status, message) get them, and their own URL back."""
    frame = pd.read_parquet(rows_path)
    skipped = frame["key"].isin(statuses.keys()).to_numpy()
    frame.loc[skipped, "status"] = [statuses[key][0] for key in frame["key"][skipped]]
    frame.loc[skipped, "error_message"] = [statuses[key][1] for key in frame["key"][skipped]]
    frame.loc[skipped, "url"] = [original_urls[key] for key in frame["key"][skipped]]
    files.write_parquet(frame, rows_path)


@contextlib.contextmanager
def _output_kept():
    """img2dataset's resizer points stdout and stderr at /dev/null around each decode and back, which its
    threads race on: two overlapping calls can leave them at /dev/null. Put them back afterwards."""
    saved = os.dup(1), os.dup(2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
