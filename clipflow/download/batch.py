"""Download a batch of planned shards, one after another, each staged until complete.

The tool writes a shard into a staging folder; its files move into place only when it has finished, the
stats file last, so a killed download never leaves a shard that looks complete. One job downloads a batch
of shards (fewer, larger jobs keep Snakemake's DAG small at scale) and skips shards already complete, so
rerunning a batch downloads only its missing or failed shards. A shard downloaded with other settings
(image size, timeout, ...) is not complete for this batch: its stats file records a digest of them. Nor is a
damaged one: its stats file records the tar's size, sha256 and sample count (clipflow.shards), and the
batch's record lists the size of every file, which the workflow compares at each start
(clipflow.workflow.reopen_incomplete), so a truncated tar reruns its batch and is downloaded again alone.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from clipflow import files, shards
from clipflow.bulk import folder_url, read_object, stored_files, upload
from clipflow.download.img2dataset_tool import fetch_shard
from clipflow.errors import ClipflowError
from clipflow.progress import Progress

log = logging.getLogger(__name__)


def download_batch(
    plan_shards: list[Path | str],
    output_folder: Path | str,
    options: dict,
    kept_columns: list[str],
    record: Path | str,
    threads: int,
    filtered: dict[str, dict[str, str]] | None = None,
    bulk: str | None = None,
) -> list[str]:
    """Download each plan shard not yet complete, then write `record`, the batch's proof of completion; returns
    the shards downloaded now. The record names the shards and their files' sizes, nothing about this run, so a
    rerun that keeps every shard writes the same record and nothing after it runs again.

    `options` holds what changes the shards (image size, timeout, ...); `threads` only sizes the work.
    `filtered` (download.subset) maps a shard to the keys of its rows left out and the filter that removed
    each: they are not fetched, and the shard's parquet gives them status `filtered`. A shard downloaded for
    another selection is downloaded again. A shard that fails does not stop the others; the batch fails at the
    end, naming it, and a rerun downloads only what is still missing.

    With `bulk` (storage.bulk) each shard is uploaded to the shards' folder there as soon as it is finished (and
    its local copy removed), and a shard already complete there (its stats file with this digest, its tar of the
    recorded size) is kept without being fetched; the record names the folder's URL.
    """
    failed, downloaded, sizes = {}, [], {}
    filtered = filtered or {}
    url = folder_url(bulk, output_folder) if bulk else None
    for number, plan_shard in enumerate(map(Path, plan_shards), start=1):
        shard = plan_shard.stem
        left_out = filtered.get(shard, {})
        digest = settings_digest(options, kept_columns, left_out)
        stored = stored_shard(url, shard, digest) if url else None
        if stored:
            log.info("shard %s is complete on %s, kept", shard, url)
            sizes.update(stored)
            continue
        current = is_current(output_folder, shard, digest)
        if current:
            log.info("shard %s is complete, kept", shard)
        try:
            if not current:
                place = f"{number} of {len(plan_shards)}"
                download_shard(plan_shard, output_folder, options, kept_columns, threads, digest, left_out, place)
                downloaded.append(shard)
            written = shards.shard_files(output_folder, shard)
            sizes.update(files.sizes(written, relative_to=output_folder))
            if url:  # in SUFFIXES order: the stats file last; the local copy goes, so a job holds one shard
                upload(output_folder, url, [path.name for path in written])
                shards.remove_shard(output_folder, shard)
        except Exception as error:  # whatever broke this shard, the rest of the batch goes on
            log.exception("shard %s failed", shard)
            failed[shard] = f"{type(error).__name__}: {error}"
    if failed:
        raise ClipflowError(f"{len(failed)} of {len(plan_shards)} shards failed, rerun to retry them: {failed}")
    names = [Path(plan_shard).stem for plan_shard in plan_shards]
    files.write_json(record, {"shards": names, "file_sizes": sizes, **({"bulk": url} if url else {})})
    return downloaded


def settings_digest(options: dict, kept_columns: list[str], left_out: dict[str, str] | None = None) -> str:
    # The subset's name is not in it: the shard's own selection (`left_out`) is.
    options = {key: value for key, value in options.items() if key != "subset"}
    settings = {"options": options, "kept_columns": list(kept_columns)}
    if left_out:  # (a shard downloaded whole keeps the digest it had before subsets could be downloaded)
        settings["left_out"] = left_out
    settings = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def stored_shard(url: str, shard: str, digest: str) -> dict[str, int] | None:
    """The sizes of a shard's files on bulk storage where it is complete there (its stats file with `digest`, its
    tar of the size the stats file records), else None: one LIST request and one small GET."""
    present = stored_files(url, shard)
    names = [f"{shard}{suffix}" for suffix in shards.SUFFIXES]
    if any(name not in present for name in names):
        return None
    stats = json.loads(read_object(url, f"{shard}_stats.json"))
    if stats.get("clipflow_settings") != digest:
        return None
    if stats.get("clipflow_tar", {}).get("bytes") != present[f"{shard}.tar"]:
        log.warning("shard %s on %s: its tar is not of the recorded size: downloaded again", shard, url)
        return None
    return {name: present[name] for name in names}


def is_current(folder: Path | str, shard: str, digest: str) -> bool:
    """Complete, undamaged, and downloaded with the settings whose digest is `digest`."""
    if not shards.is_complete(folder, shard):
        return False
    if json.loads(shards.stats_path(folder, shard).read_text()).get("clipflow_settings") != digest:
        return False
    why = shards.damage(folder, shard)
    if why:
        log.warning("shard %s is damaged (%s): downloaded again", shard, why)
    return why is None


def download_shard(
    plan_shard: Path | str,
    output_folder: Path | str,
    options: dict,
    kept_columns: list[str],
    threads: int,
    digest: str,
    left_out: dict[str, str] | None = None,
    place: str = "1 of 1",
) -> Path:
    """Download the rows of one plan shard (a parquet named after its shard id), logging its progress (the shard
    is `place` in its batch); returns the stats path."""
    plan_shard, output_folder = Path(plan_shard), Path(output_folder)
    shard = plan_shard.stem
    staging = output_folder / ".staging" / shard
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log.info("shard %s: downloading (%s in this job)", shard, place)
    progress = Progress(f"shard {shard}", pq.ParquetFile(plan_shard).metadata.num_rows, "rows")
    fetch_shard(plan_shard, staging, options, kept_columns, threads, left_out or {}, progress)
    missing = shards.missing_files(staging, shard)
    if missing:
        raise ClipflowError(f"{plan_shard}: the download finished without writing {missing}; see the log above")
    stats_path = shards.stats_path(staging, shard)
    stats = json.loads(stats_path.read_text())
    tar = shards.tar_record(staging, shard)
    if tar["samples"] != stats["successes"]:
        raise ClipflowError(
            f"{plan_shard}: the tool stored {tar['samples']} samples for {stats['successes']} successes"
        )
    # The failures by the accounting's reasons (rows left out on purpose are none): what `clipflow status` counts.
    failures = dict(sorted(progress.failures.items()))
    stats_path.write_text(
        json.dumps({**stats, "clipflow_settings": digest, "clipflow_tar": tar, "clipflow_failures": failures})
    )
    for path in shards.shard_files(staging, shard):  # in SUFFIXES order: the stats file last
        os.replace(path, output_folder / path.name)
    shutil.rmtree(staging)
    progress.finish()
    return shards.stats_path(output_folder, shard)
