"""Plan shards: ingest new metadata files, drop duplicates and invalid rows, cut the rest into shards.

The plan is append-only: files already planned keep their shards, new files get new shard ids, so
adding data never renumbers a shard that may already be downloaded. It runs while Snakemake parses
the workflow, so every shard's jobs are in the DAG (and in --dry-run) without a checkpoint.

Layout under the plan folder:
  state.json                 sources planned (with fingerprints), shards and counts
  shards/NNNNNNNN.parquet    the rows of each shard: url, caption, uid, kept columns, source, source_row
  dropped/NNNNN.parquet      rows of source NNNNN not planned, with state duplicate or invalid and the reason
  keys-GEN/                  the key store: every planned row's (url, caption) key, by bucket
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipflow import files
from clipflow.ingest.dedup import KeySpill, KeyStore, deduplicate, remove_tree
from clipflow.errors import ClipflowError
from clipflow.ingest.reader import Columns, content_hash, find_sources, read_batches
from clipflow.ingest.urls import url_problems
from clipflow.shards import shard_name

log = logging.getLogger(__name__)

PLAN_VERSION = 1


@dataclass
class Plan:
    folder: Path
    state: dict

    @property
    def shards(self) -> list[str]:
        return [shard["shard"] for shard in self.state["shards"]]

    def shard_path(self, shard: str) -> Path:
        return self.folder / "shards" / f"{shard}.parquet"

    def totals(self) -> dict:
        keys = ("rows", "duplicates", "invalid", "planned")
        return {key: sum(source[key] for source in self.state["sources"]) for key in keys}


def _settings(config: dict) -> dict:
    """What the plan depends on besides the files: changing any of it invalidates the plan."""
    input_config = config["input"]
    return {
        "version": PLAN_VERSION,
        "format": input_config["format"],
        "columns": [input_config[k] for k in ("url_col", "caption_col", "uid_col")]
        + list(input_config["keep_cols"])
        + list(input_config["metadata_cols"]),
        "samples_per_shard": config["plan"]["samples_per_shard"],
    }


def load_plan(folder: Path | str) -> Plan:
    folder = Path(folder)
    state_path = folder / "state.json"
    if not state_path.exists():
        raise ClipflowError(f"{state_path}: no shard plan yet; run the workflow (or `clipflow plan`) to make it")
    return Plan(folder, json.loads(state_path.read_text()))


class _ShardWriter:
    """Cuts a stream of kept rows into shards of `size` rows, numbered on from `next_id`."""

    def __init__(self, folder: Path, size: int, next_id: int):
        self.folder, self.size, self.next_id = folder, size, next_id
        self.pending: list[pd.DataFrame] = []
        self.pending_rows = 0
        self.written: list[dict] = []

    def add(self, rows: pd.DataFrame) -> None:
        self.pending.append(rows)
        self.pending_rows += len(rows)
        while self.pending_rows >= self.size:
            self._flush(self.size)

    def close(self) -> list[dict]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        return self.written

    def _flush(self, count: int) -> None:
        rows = pd.concat(self.pending, ignore_index=True)
        name = shard_name(self.next_id)
        files.write_parquet(rows.iloc[:count], self.folder / f"{name}.parquet")
        self.written.append({"shard": name, "rows": count})
        self.next_id += 1
        rest = rows.iloc[count:]
        self.pending, self.pending_rows = ([rest], len(rest)) if len(rest) else ([], 0)


def make_plan(config: dict, folder: Path | str) -> Plan:
    """Bring the plan up to date with the configured inputs; a no-op when no file is new."""
    folder = Path(folder)
    settings = _settings(config)
    sources = find_sources(config["input"]["paths"], config["input"]["format"])
    state_path = folder / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is None:
        state = {"settings": settings, "sources": [], "shards": [], "key_generation": 0}
    elif state["settings"] != settings:
        raise ClipflowError(
            f"{state_path}: the plan was made with {state['settings']}, the config now asks for {settings}; "
            f"delete {folder} to plan again from scratch (shards are renumbered)"
        )

    current = {source.path: source for source in sources}
    for planned in state["sources"]:
        source = current.get(planned["path"])
        if source and source.fingerprint != planned["fingerprint"] and content_hash(source.path) == planned["sha256"]:
            planned["fingerprint"] = source.fingerprint  # copied or touched, same bytes
            files.write_json(state_path, state)
        elif source is None or source.fingerprint != planned["fingerprint"]:
            change = "is gone" if source is None else "changed"
            raise ClipflowError(
                f"{planned['path']}: {change} since it was planned into shards ({state_path}); restore it, or delete "
                f"{folder} to plan again from scratch (shards are renumbered). New data belongs in new files."
            )
    planned_paths = {planned["path"] for planned in state["sources"]}
    new_sources = [source for source in sources if source.path not in planned_paths]
    if not new_sources:
        return Plan(folder, state)

    generation = state["key_generation"] + 1
    work = folder / f".work-{generation}"
    remove_tree(work)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "dropped").mkdir(exist_ok=True)
    columns = Columns.from_config(config["input"])

    # Pass 1: normalize each new file into a staged parquet and spill its keys by bucket.
    spill = KeySpill(work / "spill")
    staged, seq = [], 0
    for index, source in enumerate(new_sources, start=len(state["sources"])):
        log.info("ingesting %s", source.path)
        path, writer, rows, invalid = work / f"staged-{index:05d}.parquet", None, 0, 0
        for batch, keys in read_batches(source, columns):
            batch["seq"] = np.arange(seq, seq + len(batch), dtype=np.int64)
            batch["invalid_reason"] = url_problems(batch["url"])
            valid = (batch["invalid_reason"] == "").to_numpy()
            spill.add(keys[valid], batch["seq"].to_numpy()[valid])
            table = pa.Table.from_pandas(batch, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
            seq, rows, invalid = seq + len(batch), rows + len(batch), invalid + int((~valid).sum())
        if writer:
            writer.close()
        staged.append((index, source, path if writer else None, rows, invalid))

    total_rows = sum(s[3] for s in staged) + sum(p["rows"] for p in state["sources"])
    if total_rows == 0:
        remove_tree(work)
        raise ClipflowError(f"input.paths: the files {[s.path for s in sources]} hold no rows")

    key_folder = folder / f"keys-{generation}"
    remove_tree(key_folder)  # an interrupted plan may have left it half written
    previous_keys = KeyStore(folder / f"keys-{state['key_generation']}" if state["key_generation"] else None)
    duplicate_seqs = deduplicate(spill, previous_keys, key_folder)

    # Pass 2: drop duplicates and invalid rows (recording why), cut the rest into new shards.
    shard_writer = _ShardWriter(folder / "shards", settings["samples_per_shard"], len(state["shards"]))
    new_source_states = []
    for index, source, path, rows, invalid in staged:
        dropped_frames = []
        for record_batch in pq.ParquetFile(path).iter_batches() if path else []:
            batch = record_batch.to_pandas()
            seqs = batch.pop("seq").to_numpy()
            reasons = batch.pop("invalid_reason").to_numpy()
            is_invalid = reasons != ""
            is_duplicate = np.isin(seqs, duplicate_seqs, assume_unique=True) & ~is_invalid
            batch.insert(len(batch.columns) - 1, "source", index)
            dropped = batch[is_duplicate | is_invalid].copy()
            dropped["state"] = np.where(is_invalid[is_duplicate | is_invalid], "invalid", "duplicate")
            dropped["reason"] = np.where(
                dropped["state"] == "invalid", reasons[is_duplicate | is_invalid], "repeats an earlier (url, caption)"
            )
            dropped_frames.append(dropped)
            shard_writer.add(batch[~(is_duplicate | is_invalid)].reset_index(drop=True))
        dropped = pd.concat(dropped_frames, ignore_index=True) if dropped_frames else pd.DataFrame()
        files.write_parquet(dropped, folder / "dropped" / f"{index:05d}.parquet")
        duplicates = int((dropped["state"] == "duplicate").sum()) if len(dropped) else 0
        new_source_states.append(
            {
                "path": source.path,
                "format": source.format,
                "fingerprint": source.fingerprint,
                "sha256": content_hash(source.path),
                "rows": rows,
                "duplicates": duplicates,
                "invalid": invalid,
                "planned": rows - duplicates - invalid,
            }
        )
    new_shards = shard_writer.close()

    old_key_folder = folder / f"keys-{state['key_generation']}"
    state = {
        "settings": settings,
        "sources": state["sources"] + new_source_states,
        "shards": state["shards"] + new_shards,
        "key_generation": generation,
    }
    files.write_json(state_path, state)  # the commit point: before it, the previous plan stands whole
    remove_tree(old_key_folder)
    remove_tree(work)
    plan = Plan(folder, state)
    log.info("planned %d new shards from %d new files: %s", len(new_shards), len(new_sources), plan.totals())
    return plan
