"""Plan shards: ingest new metadata files, drop duplicates and invalid rows, cut the rest into shards.
With input.verbatim (DataComp's pool is its metadata), every row is planned as given, duplicates and all.

The plan is append-only: files already planned keep their shards, new files get new shard ids, so
adding data never renumbers a shard that may already be downloaded. It runs while Snakemake parses
the workflow, so every shard's jobs are in the DAG (and in --dry-run) without a checkpoint.

It runs in three passes over the new files, each split across `plan.processes` worker processes with memory
bounded by one batch of rows or one key bucket, whatever the pool's size:
  1. ingest: read each file, normalize its rows and check their URLs, stage them, spill their keys by bucket;
  2. deduplicate: per range of key buckets, against the keys of everything planned before;
  3. cut: per group of files, drop what is duplicate or invalid and write the rest into shards. Each group
     knows where its rows start, so it writes whole shards itself; a shard cut across two groups is written
     from their pieces at the end.

Layout under the plan folder:
  state.json                 sources planned (with fingerprints), shards and counts
  shards/NNNNNNNN.parquet    the rows of each shard: url, caption, uid, kept columns, source, source_row
  dropped/NNNNN.parquet      rows of source NNNNN not planned, with state duplicate or invalid and the reason
  .lock                      held (flock) by the process planning, and naming it
  keys-GEN/                  the key store: every planned row's (url, caption) key, by bucket
  uids-GEN/                  with input.uid_col: the key of every planned row's uid, by bucket

A uid names one row (in subsets, shards and the index), so a row whose given uid repeats one planned before it
is not planned: it is dropped as a duplicate with a reason that names the row it repeats, or, with
input.verbatim (a DataComp pool, whose uids are unique), the plan is refused, naming both rows and the uid.
"""

import fcntl
import json
import logging
import multiprocessing
import os
import socket
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipflow import files
from clipflow.errors import ClipflowError
from clipflow.ingest.dedup import BUCKETS, KeySpill, KeyStore, deduplicate, remove_tree
from clipflow.ingest.keys import KEY_DTYPE, uid_keys
from clipflow.ingest.reader import Columns, Source, content_hash, find_sources, read_batches
from clipflow.ingest.urls import url_problems
from clipflow.shards import shard_name

log = logging.getLogger(__name__)

# 1: blake2b keys and derived uids; 2: md5 (clipflow.ingest.keys), which DuckDB computes vectorized.
PLAN_VERSION = 2
ROW_BITS = 40  # a row's sequence number is its source's index << ROW_BITS | its row: sorting it is input order
POOL_BYTES = 16 << 20  # less new input than this is planned in this process: workers cost ~1 s to start
TASKS_PER_PROCESS = 4  # groups of files per worker, so that files of different sizes even out


def plan_shard_path(folder: Path | str, shard: str) -> Path:
    return Path(folder) / "shards" / f"{shard}.parquet"


@dataclass
class Plan:
    folder: Path
    state: dict

    @property
    def shards(self) -> list[str]:
        return [shard["shard"] for shard in self.state["shards"]]

    def shard_path(self, shard: str) -> Path:
        return plan_shard_path(self.folder, shard)

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
        **({"verbatim": True} if input_config["verbatim"] else {}),  # (plans made before it stay valid)
        "samples_per_shard": config["plan"]["samples_per_shard"],
    }


def load_plan(folder: Path | str) -> Plan:
    folder = Path(folder)
    state_path = folder / "state.json"
    if not state_path.exists():
        raise ClipflowError(f"{state_path}: no shard plan yet; run the workflow (or `clipflow plan`) to make it")
    return Plan(folder, json.loads(state_path.read_text()))


def _groups(items: list, weights: list[int], count: int) -> list[list]:
    """`items` cut into at most `count` consecutive groups of about equal weight, none empty."""
    target, groups, current, weight = max(1, sum(weights) / count), [], [], 0
    for item, item_weight in zip(items, weights):
        current.append(item)
        weight += item_weight
        if weight >= target * (len(groups) + 1):
            groups.append(current)
            current = []
    return groups + [current] if current else groups


def _size(source: Source) -> int:
    fs, path = fsspec.core.url_to_fs(source.path)
    return fs.size(path) or 0


def _staged_path(work: Path, index: int) -> Path:
    return work / "staged" / f"{index:05d}.arrow"


def _invalid_path(work: Path, index: int) -> Path:
    return work / "invalid" / f"{index:05d}.parquet"


def _ingest(task: int, group: list[tuple[int, Source]], columns: Columns, work: Path) -> list[dict]:
    """Pass 1 over a group of files: stage each file's normalized rows and the reasons of its invalid ones, and
    spill the keys of its valid rows; returns each file's row counts. Given uids' keys are spilled too in a
    verbatim plan, and otherwise staged, to be spilled once the (url, caption) duplicates are known."""
    spill = KeySpill(work / "spill" / f"{task:05d}")
    uid_spill = KeySpill(work / "uid-spill" / f"{task:05d}") if columns.uid and columns.verbatim else None
    counts = []
    for index, source in group:
        log.info("ingesting %s", source.path)
        writer, schema, rows, invalid = None, None, 0, {}
        staged_uids = open(_staged_uids_path(work, index), "wb") if columns.uid and not columns.verbatim else None
        for batch, keys in read_batches(source, columns):
            source_rows = batch["source_row"].to_numpy()
            # Verbatim: every row is planned; the download leaves the URLs it does not fetch, accounting for them.
            problems = {} if columns.verbatim else url_problems(batch["url"].combine_chunks())
            valid = np.ones(batch.num_rows, dtype=bool)
            valid[list(problems)] = False
            seqs = ((index << ROW_BITS) | source_rows)[valid]
            if not columns.verbatim:  # no (url, caption) deduplication: no keys to compare
                spill.add(keys[valid], seqs)
            if columns.uid:
                given = uid_keys(batch["uid"].combine_chunks())[valid]
                if uid_spill:
                    uid_spill.add(given, seqs)
                else:
                    staged_uids.write(_uid_records(given, seqs).tobytes())
            invalid.update((int(source_rows[position]), reason) for position, reason in problems.items())
            if writer is None:
                schema = batch.schema  # the first batch's types hold for the file (jsonl's may vary)
                writer = pa.ipc.new_file(_staged_path(work, index), schema)
            writer.write_table(batch.cast(schema))
            rows += batch.num_rows
        if writer:
            writer.close()
        if staged_uids:
            staged_uids.close()
        reasons = pa.table({"source_row": pa.array(list(invalid), pa.int64()), "reason": list(invalid.values())})
        files.write_parquet(reasons, _invalid_path(work, index))
        counts.append({"index": index, "rows": rows, "invalid": len(invalid), "sha256": content_hash(source.path)})
    spill.flush()
    if uid_spill:
        uid_spill.flush()
    return counts


UID_RECORD = np.dtype([("key", KEY_DTYPE), ("seq", np.int64)])
UID_RECORDS_READ = 1 << 20  # staged uid records read at a time: 24 MB


def _staged_uids_path(work: Path, index: int) -> Path:
    return work / "staged" / f"{index:05d}.uids"


def _uid_records(keys: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    records = np.empty(len(keys), UID_RECORD)
    records["key"], records["seq"] = keys, seqs
    return records


def _spill_planned_uids(task: int, group: list[dict], duplicate_files: list[Path], work: Path) -> None:
    """Pass 2a over a group of files: spill the staged uid keys of the rows that repeat no (url, caption), so
    that only rows about to be planned claim a uid."""
    spill = KeySpill(work / "uid-spill" / f"{task:05d}")
    for source in group:
        duplicates, _ = _duplicates_of(source["index"], duplicate_files)
        path = _staged_uids_path(work, source["index"])
        records = np.memmap(path, UID_RECORD, mode="r") if path.stat().st_size else np.empty(0, UID_RECORD)
        for start in range(0, len(records), UID_RECORDS_READ):
            chunk = np.asarray(records[start : start + UID_RECORDS_READ])
            places = np.searchsorted(duplicates, chunk["seq"])
            repeated = places < len(duplicates)
            repeated[repeated] = duplicates[places[repeated]] == chunk["seq"][repeated]
            spill.add(chunk["key"][~repeated], chunk["seq"][~repeated])
        del records
        path.unlink()
    spill.flush()


def _deduplicate(buckets: range, out: Path, spill_folders: list[Path], previous: Path | None, keys: Path) -> dict:
    """Pass 2 over a range of key buckets: the sorted sequence numbers of their repeated rows, saved to `out`,
    and those of the rows they repeat, beside it; returns how many repeats each source holds."""
    repeats, firsts = deduplicate(buckets, [KeySpill(f) for f in spill_folders], KeyStore(previous), keys)
    np.save(out, repeats)
    np.save(_firsts_path(out), firsts)
    sources, counts = np.unique(repeats >> ROW_BITS, return_counts=True)
    return dict(zip(sources.tolist(), counts.tolist()))


def _firsts_path(repeats_path: Path) -> Path:
    return repeats_path.with_suffix(".first.npy")


def _duplicates_of(index: int, duplicate_files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The sorted sequence numbers of source `index`'s repeated rows, from every bucket range's file, and those
    of the rows they repeat."""
    low, high = index << ROW_BITS, (index + 1) << ROW_BITS
    parts, firsts = [], []
    for path in duplicate_files:
        seqs = np.load(path, mmap_mode="r")
        span = slice(np.searchsorted(seqs, low), np.searchsorted(seqs, high))
        parts.append(np.asarray(seqs[span]))
        firsts.append(np.asarray(np.load(_firsts_path(path), mmap_mode="r")[span]))
    seqs, firsts = np.concatenate(parts), np.concatenate(firsts)
    order = np.argsort(seqs)
    return seqs[order], firsts[order]


def _staged_value(work: Path, index: int, row: int, column: str):
    staged = pa.ipc.open_file(pa.memory_map(str(_staged_path(work, index))))
    for number in range(staged.num_record_batches):
        batch = staged.get_batch(number)
        rows = batch["source_row"].to_numpy()
        if rows[0] <= row <= rows[-1]:
            return batch[column][int(np.searchsorted(rows, row))].as_py()
    raise KeyError(row)


def _repeated_uid_error(uid_files: list[Path], paths: list[str], uid_column: str, work: Path) -> ClipflowError:
    """The refusal of a verbatim plan whose uids repeat, naming the first repeat, the row it repeats and the uid."""
    repeats = [(int(seqs[0]), int(np.load(_firsts_path(path))[0]), len(seqs))
               for path in uid_files if len(seqs := np.load(path))]
    seq, first, _ = min(repeats)
    mask = (1 << ROW_BITS) - 1
    uid = _staged_value(work, seq >> ROW_BITS, seq & mask, "uid")
    earlier = f"row {first & mask} of {paths[first >> ROW_BITS]}" if first >= 0 else "a row planned before"
    return ClipflowError(
        f"{paths[seq >> ROW_BITS]}: row {seq & mask} repeats the uid {uid!r} of {earlier} (column {uid_column!r});"
        f" {sum(count for *_, count in repeats):,} rows in all repeat an earlier row's uid. With input.verbatim (a"
        f" DataComp pool, whose uids are unique) every row is planned and a uid names one sample: correct the"
        f" metadata, or set input.verbatim: false to drop the repeats"
    )


def _repeated_uid_reason(first: int, paths: list[str]) -> str:
    if first < 0:
        return "repeats the uid of a row planned before (input.uid_col)"
    return f"repeats the uid of row {first & ((1 << ROW_BITS) - 1)} of {paths[first >> ROW_BITS]} (input.uid_col)"


class _ShardCutter:
    """Cuts the planned rows from new-row offset `start` on into shards of `size` rows (shard k holds offsets
    [k * size, (k + 1) * size) of `total`). A shard held whole is written to `shards`; a part of one that
    another group also holds, to `pieces/<shard>/<offset>.parquet`."""

    def __init__(self, folder: Path, pieces: Path, size: int, first_id: int, start: int, total: int):
        self.folder, self.pieces, self.size, self.first_id = folder, pieces, size, first_id
        self.position, self.total = start, total
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, rows: pa.Table) -> None:
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        while self.pending_rows and self.pending_rows >= self._next_cut() - self.position:
            self._flush(self._next_cut() - self.position)

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)

    def _next_cut(self) -> int:
        return min((self.position // self.size + 1) * self.size, self.total)

    def _flush(self, count: int) -> None:
        rows = pa.concat_tables(self.pending, promote_options="permissive")
        shard = self.position // self.size
        name = shard_name(self.first_id + shard)
        whole = self.position == shard * self.size and count == min(self.size, self.total - self.position)
        if whole:
            path = self.folder / f"{name}.parquet"
        else:
            (self.pieces / name).mkdir(parents=True, exist_ok=True)
            path = self.pieces / name / f"{self.position:015d}.parquet"
        _write_shard(rows.slice(0, count), path)
        self.position += count
        rest = rows.slice(count)
        self.pending, self.pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)


def _write_shard(rows: pa.Table, path: Path) -> None:
    # Dictionary encoding and statistics double the write time and gain little on urls and captions, which
    # rarely repeat, and on shards that are always read whole. Encoding 16,384 rows at a time, not 1,024, saves
    # another ~7%.
    files.write_parquet(rows, path, use_dictionary=False, write_statistics=False, write_batch_size=16_384)


def _read_parquet(path: Path) -> pa.Table:
    # Not pq.read_table: it imports pyarrow.dataset, ~0.4 s in each process that plans
    return pq.ParquetFile(path).read()


def _cut(
    group: list[dict], cutter: dict, duplicate_files: list[Path], uid_files: list[Path], paths: list[str],
    folder: Path, work: Path
) -> None:
    """Pass 3 over a group of files: write each file's dropped rows, and its planned rows into shards."""
    shards = _ShardCutter(folder / "shards", work / "pieces", **cutter)
    for source in group:
        index, dropped = source["index"], []
        duplicates, _ = _duplicates_of(index, duplicate_files)
        uid_repeats, uid_firsts = _duplicates_of(index, uid_files) if uid_files else (np.empty(0, np.int64),) * 2
        path = _staged_path(work, index)
        invalid_rows = _read_parquet(_invalid_path(work, index))
        invalid_row_numbers = invalid_rows["source_row"].to_numpy()
        reasons = dict(zip(invalid_row_numbers.tolist(), invalid_rows["reason"].to_pylist()))
        staged = pa.ipc.open_file(pa.memory_map(str(path))) if path.exists() else None
        for number in range(staged.num_record_batches if staged else 0):
            batch = pa.Table.from_batches([staged.get_batch(number)])
            rows = batch["source_row"].to_numpy()
            seqs = (index << ROW_BITS) | rows
            invalid = np.isin(rows, invalid_row_numbers)
            duplicate = np.isin(seqs, duplicates, assume_unique=True)
            uid_repeat = np.isin(seqs, uid_repeats, assume_unique=True)
            batch = batch.add_column(batch.num_columns - 1, "source", pa.array(np.full(len(rows), index)))
            drop = invalid | duplicate | uid_repeat
            if drop.any():
                dropped_rows = rows[drop]
                state = np.where(invalid[drop], "invalid", "duplicate")
                reasons.update(
                    (int(seq) & ((1 << ROW_BITS) - 1), _repeated_uid_reason(int(first), paths))
                    for seq, first in zip(seqs[uid_repeat], uid_firsts[np.searchsorted(uid_repeats, seqs[uid_repeat])])
                )
                reason = [reasons.get(row, "repeats an earlier (url, caption)") for row in dropped_rows.tolist()]
                dropped.append(
                    batch.filter(drop)
                    .append_column("state", pa.array(state, pa.string()))
                    .append_column("reason", pa.array(reason, pa.string()))
                )
            shards.add(batch.filter(~drop))
        path.unlink(missing_ok=True)  # here, in parallel: removing ~100 bytes a row costs about as much as writing
        table = pa.concat_tables(dropped, promote_options="permissive") if dropped else pa.table({})
        files.write_parquet(table, folder / "dropped" / f"{index:05d}.parquet")
    shards.close()


class _InProcess:
    """What a process pool offers the planner, for plans too small to be worth starting workers."""

    def map(self, function, *iterables):
        return map(function, *iterables)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _pool(processes: int, new_bytes: int):
    if processes < 2 or new_bytes < POOL_BYTES:
        log.info("planning %d new bytes in this process", new_bytes)
        return _InProcess()
    log.info("planning %d new bytes in %d worker processes", new_bytes, processes)
    # forkserver: workers fork from a fresh server that imported this module, never from Snakemake's process,
    # and never re-run the main module (`python -m snakemake` would plan again).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(processes, mp_context=context)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_settings(state: dict, settings: dict, state_path: Path, folder: Path) -> None:
    """Refuse a plan made by an earlier clipflow or with other settings."""
    if state["settings"].get("version") != PLAN_VERSION:
        raise ClipflowError(
            f"{state_path}: the plan was made by an earlier clipflow (plan version {state['settings'].get('version')}, "
            f"whose row keys and derived uids were blake2b hashes); this one derives them with md5 and cannot extend "
            f"it without changing uids. Keep using the earlier clipflow for this run, or delete {folder} to plan "
            f"again from scratch (shards are renumbered, and uids derived from url and caption change)."
        )
    if state["settings"] != settings:
        raise ClipflowError(
            f"{state_path}: the plan was made with {state['settings']}, the config now asks for {settings}; "
            f"delete {folder} to plan again from scratch (shards are renumbered)"
        )


def _check_sources(sources: list[Source], state: dict, state_path: Path, folder: Path) -> bool:
    """Refuse a planned file that is gone or changed; one copied or touched (same bytes) gets its new fingerprint
    in `state`, and the answer is whether any did."""
    current, refreshed = {source.path: source for source in sources}, False
    for planned in state["sources"]:
        source = current.get(planned["path"])
        if source and source.fingerprint != planned["fingerprint"] and content_hash(source.path) == planned["sha256"]:
            planned["fingerprint"], refreshed = source.fingerprint, True  # copied or touched, same bytes
        elif source is None or source.fingerprint != planned["fingerprint"]:
            change = "is gone" if source is None else "changed"
            raise ClipflowError(
                f"{planned['path']}: {change} since it was planned into shards ({state_path}); restore it, or delete "
                f"{folder} to plan again from scratch (shards are renumbered). New data belongs in new files."
            )
    return refreshed


def unplanned_sources(config: dict, plan: Plan) -> list[str]:
    """The configured input files `plan` does not hold yet, after the checks make_plan makes, writing nothing."""
    state_path = plan.folder / "state.json"
    _check_settings(plan.state, _settings(config), state_path, plan.folder)
    sources = find_sources(config["input"]["paths"], config["input"]["format"])
    _check_sources(sources, json.loads(json.dumps(plan.state)), state_path, plan.folder)
    planned = {source["path"] for source in plan.state["sources"]}
    return [source.path for source in sources if source.path not in planned]


def make_plan(config: dict, folder: Path | str) -> Plan:
    """Bring the plan up to date with the configured inputs; a no-op when no file is new. One process at a time
    plans a folder: another that finds it planning is refused, and the plan it is making stays whole."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the process ends, however it ends
        except BlockingIOError:
            lock.seek(0)
            raise ClipflowError(
                f"{folder}: another clipflow process ({lock.read().strip() or 'pid unknown'}) is making the shard"
                f" plan; run again once it has finished (a workflow started twice in one folder plans once)"
            ) from None
        except OSError as error:  # a file system without locks (some Lustre mounts): plan unguarded
            log.warning("%s: cannot lock the plan folder (%s); planning without a lock", folder, error)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        return _make_plan(config, folder)


def _make_plan(config: dict, folder: Path) -> Plan:
    settings = _settings(config)
    sources = find_sources(config["input"]["paths"], config["input"]["format"])
    state_path = folder / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is None:
        state = {"settings": settings, "sources": [], "shards": [], "key_generation": 0}
    else:
        _check_settings(state, settings, state_path, folder)

    if _check_sources(sources, state, state_path, folder):
        files.write_json(state_path, state)
    planned_paths = {planned["path"] for planned in state["sources"]}
    new_sources = [source for source in sources if source.path not in planned_paths]
    if not new_sources:
        return Plan(folder, state)

    generation = state["key_generation"] + 1
    work = folder / f".work-{generation}"
    remove_tree(work)
    for sub in ("staged", "invalid", "duplicates", "uid-repeats", "pieces"):
        (work / sub).mkdir(parents=True)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "dropped").mkdir(exist_ok=True)
    key_folder = folder / f"keys-{generation}"
    remove_tree(key_folder)  # an interrupted plan may have left it half written
    previous_keys = folder / f"keys-{state['key_generation']}" if state["key_generation"] else None
    uid_folder = folder / f"uids-{generation}"
    remove_tree(uid_folder)
    previous_uids = folder / f"uids-{state['key_generation']}" if state["key_generation"] else None

    processes = config["plan"].get("processes") or available_cores()
    sizes = [_size(source) for source in new_sources]
    groups = _groups(list(enumerate(new_sources, start=len(state["sources"]))), sizes, processes * TASKS_PER_PROCESS)
    tasks = min(BUCKETS, processes * TASKS_PER_PROCESS)
    bucket_ranges = [range(b[0], b[-1] + 1) for b in np.array_split(np.arange(BUCKETS), tasks)]
    spills = [work / "spill" / f"{task:05d}" for task in range(len(groups))]
    duplicate_files = [work / "duplicates" / f"{number:03d}.npy" for number in range(len(bucket_ranges))]
    columns = Columns.from_config(config["input"])
    uid_files = [work / "uid-repeats" / f"{number:03d}.npy" for number in range(len(bucket_ranges))]
    uid_files = uid_files if columns.uid else []
    paths = [planned["path"] for planned in state["sources"]] + [source.path for source in new_sources]
    with _pool(processes, sum(sizes)) as pool:
        ingest = partial(_ingest, columns=columns, work=work)
        group_counts = list(pool.map(ingest, range(len(groups)), groups))
        counts = [count for group in group_counts for count in group]
        if sum(c["rows"] for c in counts) + sum(p["rows"] for p in state["sources"]) == 0:
            remove_tree(work)
            raise ClipflowError(f"input.paths: the files {[s.path for s in sources]} hold no rows")
        dedup = partial(_deduplicate, spill_folders=spills, previous=previous_keys, keys=key_folder)
        per_source = list(pool.map(dedup, bucket_ranges, duplicate_files))  # duplicates by source, per bucket range
        if uid_files:  # then the rows left that repeat a uid: their own pass, since uid keys fall in other buckets
            if not columns.verbatim:
                spill_uids = partial(_spill_planned_uids, duplicate_files=duplicate_files, work=work)
                list(pool.map(spill_uids, range(len(groups)), group_counts))
            uid_spills = [work / "uid-spill" / f"{task:05d}" for task in range(len(groups))]
            dedup = partial(_deduplicate, spill_folders=uid_spills, previous=previous_uids, keys=uid_folder)
            per_source += list(pool.map(dedup, bucket_ranges, uid_files))
            if columns.verbatim and any(np.load(path, mmap_mode="r").size for path in uid_files):
                error = _repeated_uid_error(uid_files, paths, columns.uid, work)
                for unfinished in (work, key_folder, uid_folder):
                    remove_tree(unfinished)
                raise error
        for count in counts:
            count["duplicates"] = sum(found.get(count["index"], 0) for found in per_source)
            count["planned"] = count["rows"] - count["duplicates"] - count["invalid"]
        # Each group's planned rows start where the previous group's end: it can cut its shards on its own.
        new_rows = sum(count["planned"] for count in counts)
        if new_rows == 0 and not state["shards"]:  # no shard at all: every later step would have nothing to do
            remove_tree(work)
            rows, invalid, repeated = (sum(count[key] for count in counts) for key in ("rows", "invalid", "duplicates"))
            raise ClipflowError(
                f"input.paths: none of the {rows:,} rows of {[s.path for s in sources]} can be downloaded: {invalid:,}"
                f" have no URL clipflow fetches in column {columns.url!r} (empty, no host, or a scheme other than"
                f" http and https), {repeated:,} repeat an earlier (url, caption)"
            )
        first_id, size = len(state["shards"]), settings["samples_per_shard"]
        cutters, start = [], 0
        for group in group_counts:
            cutters.append({"size": size, "first_id": first_id, "start": start, "total": new_rows})
            start += sum(count["planned"] for count in group)
        cut = partial(_cut, duplicate_files=duplicate_files, uid_files=uid_files, paths=paths, folder=folder, work=work)
        list(pool.map(cut, group_counts, cutters))
    for pieces in sorted((work / "pieces").iterdir()):
        parts = [_read_parquet(path) for path in sorted(pieces.iterdir())]
        _write_shard(
            pa.concat_tables(parts, promote_options="permissive"), folder / "shards" / f"{pieces.name}.parquet"
        )
    new_shards = [
        {"shard": shard_name(first_id + k), "rows": min(size, new_rows - k * size)} for k in range(-(-new_rows // size))
    ]

    by_index = {count["index"]: count for count in counts}
    new_source_states = [
        {
            "path": source.path,
            "format": source.format,
            "fingerprint": source.fingerprint,
            **{key: by_index[index][key] for key in ("sha256", "rows", "duplicates", "invalid", "planned")},
        }
        for index, source in enumerate(new_sources, start=len(state["sources"]))
    ]
    old_key_folders = [folder / f"{kind}-{state['key_generation']}" for kind in ("keys", "uids")]
    state = {
        "settings": settings,
        "sources": state["sources"] + new_source_states,
        "shards": state["shards"] + new_shards,
        "key_generation": generation,
    }
    files.write_json(state_path, state)  # the commit point: before it, the previous plan stands whole
    for old_key_folder in old_key_folders:
        remove_tree(old_key_folder)
    remove_tree(work)
    plan = Plan(folder, state)
    log.info("planned %d new shards from %d new files: %s", len(new_shards), len(new_sources), plan.totals())
    return plan
