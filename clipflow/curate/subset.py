"""The subsets that filters select: combining their tables, DataComp's subset file, and examples.

A subset's job reads the pool and the filters' tables a row group at a time (they are written in the same groups),
so that it holds one group, one sorted run of kept uids and the merge's blocks at any pool size."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipflow import files
from clipflow.curate.filters.base import first_failures
from clipflow.curate.pool import POOL_ROWS
from clipflow.errors import ClipflowError
from clipflow.curate.takedowns import TAKEDOWN
from clipflow.evaluate.holdout import HELD_OUT

UID_PATTERN = r"^[0-9a-fA-F]{32}$"
UID_DTYPE = np.dtype("u8,u8")  # DataComp's subset file: each 128-bit uid as (high, low), sorted
# removed.parquet's row groups: a download job reads the groups whose shard range meets its shards (~4 MB each)
REMOVED_ROW_GROUP = 200_000
RUN_ROWS = 8_000_000  # kept uids sorted in memory at a time (128 MB) before they are spilled as a sorted run
MERGE_ROWS = 8_000_000  # uids the merge of the runs reads at a time, over all runs
SCORE_BINS = 50
EXAMPLES = 6  # kept and removed rows shown
REMOVED_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("filter", pa.string())])


def _hex_values(hex_chars: np.ndarray) -> np.ndarray:
    """ASCII hex digits (uint8, n x 2k) as n x k bytes."""
    digits = np.full(256, 0, np.uint8)
    for offset, chars in ((0, b"0123456789"), (10, b"abcdef"), (10, b"ABCDEF")):
        digits[np.frombuffer(chars, np.uint8)] = np.arange(offset, offset + len(chars), dtype=np.uint8)
    nibbles = digits[hex_chars]
    return nibbles[:, 0::2] << 4 | nibbles[:, 1::2]


def uid_array(uids: pa.Array | pa.ChunkedArray, first_row: int = 0) -> np.ndarray:
    """`uids` (128-bit hex strings) as DataComp's (high, low) uint64 pairs, unsorted; a uid that is not one names its
    row, counted from `first_row`."""
    uids = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    uids = uids if uids.type == pa.string() else uids.cast(pa.string())  # the offsets below are int32
    valid = pc.fill_null(pc.match_substring_regex(uids, UID_PATTERN), False)
    if len(uids) and not pc.all(valid).as_py():
        row = int(np.flatnonzero(~valid.to_numpy(zero_copy_only=False))[0])
        raise ClipflowError(
            f"uid {uids[row].as_py()!r} (pool row {first_row + row}) is not a 128-bit hex string: DataComp subset "
            "files hold such uids (leave input.uid_col null to derive them)"
        )
    # every value is 32 one-byte characters, so the values lie back to back in the data buffer
    offsets = np.frombuffer(uids.buffers()[1], np.int32)[uids.offset : uids.offset + len(uids) + 1]
    chars = np.frombuffer(uids.buffers()[2], np.uint8)[offsets[0] : offsets[-1]] if len(uids) else np.empty(0, np.uint8)
    pairs = _hex_values(chars.reshape(-1, 32)).copy().view(">u8").astype("u8")  # big-endian: the first digits are high
    result = np.empty(len(pairs), UID_DTYPE)
    result["f0"], result["f1"] = pairs[:, 0], pairs[:, 1]
    return result


def _sorted(pairs: np.ndarray) -> np.ndarray:
    return pairs[np.lexsort((pairs["f1"], pairs["f0"]))]


class SortedUidWriter:
    """DataComp's subset file from uids that arrive in any order: sorted runs of `run_rows` spilled beside `path`,
    then merged a block of each at a time into it, so that memory holds a run, or `merge_rows` of the runs."""

    def __init__(self, path: Path | str, run_rows: int = RUN_ROWS, merge_rows: int = MERGE_ROWS):
        self.path, self.run_rows, self.merge_rows = Path(path), run_rows, merge_rows
        self._runs_path = Path(f"{path}.runs")
        self._runs = open(self._runs_path, "wb")
        self._run_ends: list[int] = []
        self._pending: list[np.ndarray] = []

    def add(self, pairs: np.ndarray) -> None:
        self._pending.append(pairs)
        if sum(len(p) for p in self._pending) >= self.run_rows:
            self._spill()

    def _spill(self) -> None:
        if self._pending:
            run = _sorted(np.concatenate(self._pending))
            self._runs.write(run.tobytes())
            self._run_ends.append((self._run_ends[-1] if self._run_ends else 0) + len(run))
            self._pending = []

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        try:
            if kind is None:
                self._spill()
                self._runs.close()
                self._merge()
        finally:
            self._runs.close()
            self._runs_path.unlink(missing_ok=True)

    def _merge(self) -> None:
        total = self._run_ends[-1] if self._run_ends else 0
        stored = np.memmap(self._runs_path, UID_DTYPE, "r") if total else np.empty(0, UID_DTYPE)
        runs = [stored[start:end] for start, end in zip([0, *self._run_ends], self._run_ends)]
        block = max(self.merge_rows // max(len(runs), 1), 1)
        with files.replacing(self.path) as tmp:
            out = np.lib.format.open_memmap(tmp, "w+", UID_DTYPE, (total,))
            written, carried, starts = 0, np.empty(0, UID_DTYPE), [0] * len(runs)
            while written < total:
                pieces = [carried]
                final = None  # no uid above the lowest last uid read of a run not yet read to its end may be written
                for number, run in enumerate(runs):
                    if starts[number] < len(run):
                        pieces.append(run[starts[number] : starts[number] + block])
                        starts[number] += block
                        if starts[number] < len(run):
                            last = tuple(pieces[-1][-1].tolist())
                            final = last if final is None or last < final else final
                merged = _sorted(np.concatenate(pieces))
                ready = len(merged)
                if final is not None:
                    high, low = merged["f0"], merged["f1"]
                    ready = int(((high < final[0]) | ((high == final[0]) & (low <= final[1]))).sum())
                out[written : written + ready] = merged[:ready]
                written, carried = written + ready, merged[ready:]
            out.flush()
            del out


def _checked_groups(pool, tables: dict) -> list[int]:
    """The pool's row-group sizes, refusing a table that was written for another pool."""
    sizes = [group.num_rows for group in _row_groups(pool)]
    for name, path in tables.items():
        if [group.num_rows for group in _row_groups(path)] != sizes:
            raise ClipflowError(f"filter {name} was computed on another pool: rerun it")
    return sizes


def _row_groups(path):
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(group) for group in range(metadata.num_row_groups)]


def subset_groups(pool, tables: dict, columns: list[str], groups=None):
    """Per row group of the pool (all, or those listed in `groups`, in their order): (its number, its first pool row,
    the pool's `columns` of it, {filter: its table's keep and detail there}), as Arrow tables, the filters in their
    order. A table whose keys differ from the pool's is refused."""
    sizes = _checked_groups(pool, tables)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    readers = {name: pq.ParquetFile(path) for name, path in {"": pool, **tables}.items()}
    for group in range(len(sizes)) if groups is None else groups:
        rows = readers[""].read_row_group(group, columns=columns if "key" in columns else ["key", *columns])
        decided = {}
        for name in tables:
            table = readers[name].read_row_group(group, columns=["key", "keep", "detail"])
            if not table["key"].equals(rows["key"]):
                raise ClipflowError(f"filter {name} was computed on another pool: rerun it")
            decided[name] = table
        yield group, int(starts[group]), rows, decided


def filter_effects(masks: dict[str, np.ndarray], rows: int) -> tuple[np.ndarray, dict]:
    """Rows every filter keeps, and how many rows each filter (name -> keep mask) removes alone, as the only one,
    and in the listed order."""
    keep = np.ones(rows, bool)
    effects = {}
    for name, mask in masks.items():
        others = np.logical_and.reduce([m for n, m in masks.items() if n != name] or [np.ones(rows, bool)])
        effects[name] = {
            "removed_alone": int((~mask).sum()),
            "removed_only_by_it": int((~mask & others).sum()),
            "removed_in_order": int((keep & ~mask).sum()),
        }
        keep &= mask
    return keep, effects


def score_edges(pool) -> np.ndarray:
    """SCORE_BINS bins over the pool's clip_score range, from one pass over that column."""
    low, high = np.inf, -np.inf
    for batch in pq.ParquetFile(pool).iter_batches(columns=["clip_score"]):
        extremes = pc.min_max(batch["clip_score"])
        if extremes["min"].is_valid:
            low, high = min(low, extremes["min"].as_py()), max(high, extremes["max"].as_py())
    return np.linspace(low, high, SCORE_BINS + 1) if low <= high else np.linspace(0, 1, SCORE_BINS + 1)


def write_subset(pool, tables: dict, uids_path, kept_path, removed_path) -> dict:
    """The subset of `pool` that every filter of `tables` (name -> its table, in order) keeps: DataComp's subset file
    at `uids_path`, the kept pool rows at `kept_path` and, at `removed_path`, the rows it leaves out (shard, key,
    first filter), in pool order (by shard, then key), so that a download job reads only its shards' row groups.
    Held-out rows are not among them: the evaluation downloads them. Returns the summary, with the clip_score
    histogram of kept and removed rows (`score_histogram`) and each group's kept rows (`kept_by_group`), which
    examples() takes."""
    edges = score_edges(pool)
    histogram = {"kept": np.zeros(SCORE_BINS, int), "removed": np.zeros(SCORE_BINS, int)}
    effects, kept_by_group = {}, []
    schema = pq.read_schema(pool)
    with (
        SortedUidWriter(uids_path) as uids,
        files.RowGroupWriter(kept_path, schema, POOL_ROWS) as kept,
        files.RowGroupWriter(removed_path, REMOVED_SCHEMA, REMOVED_ROW_GROUP) as removed,
    ):
        for _, start, rows, decided in subset_groups(pool, tables, schema.names):
            masks = {name: table["keep"].to_numpy() for name, table in decided.items()}
            keep, group_effects = filter_effects(masks, rows.num_rows)
            for name, counts in group_effects.items():
                effects[name] = {field: effects.get(name, {}).get(field, 0) + n for field, n in counts.items()}
            uids.add(uid_array(rows["uid"].filter(keep), first_row=start))
            kept.write(rows.filter(keep))
            first = first_failures({name: ~mask for name, mask in masks.items()}, rows.num_rows).to_numpy()
            leaves = ~keep & (first != HELD_OUT)
            removed.write(
                pa.table(
                    [rows["shard"].filter(leaves), rows["key"].filter(leaves), first[leaves]], schema=REMOVED_SCHEMA
                )
            )
            scores = rows["clip_score"].to_numpy()
            histogram["kept"] += np.histogram(scores[keep], edges)[0]
            histogram["removed"] += np.histogram(scores[~keep], edges)[0]
            kept_by_group.append(int(keep.sum()))
    kept_rows, total = sum(kept_by_group), sum(group.num_rows for group in _row_groups(pool))
    return {
        "pool": total,
        "kept": kept_rows,
        "removed": total - kept_rows,
        "filters": effects,
        "score_histogram": {"edges": edges.tolist(), **{name: counts.tolist() for name, counts in histogram.items()}},
        "kept_by_group": kept_by_group,
    }


def removed_for(removed_path, shards: list[str]) -> dict[str, dict[str, str]]:
    """The rows of `shards` that the subset leaves out, as shard -> {key: filter}, reading only the row groups
    that hold those shards."""
    table = pq.read_table(removed_path, filters=[("shard", "in", list(shards))])
    found = {shard: {} for shard in shards}
    for shard, key, name in zip(*(table[column].to_pylist() for column in ("shard", "key", "filter"))):
        found[shard][key] = name
    return found


def _spread(total: int, count: int) -> np.ndarray:
    return np.linspace(0, total - 1, min(count, total)).astype(int) if total else np.empty(0, int)


def examples(pool, tables: dict, kept_by_group: list[int], reader, count: int = EXAMPLES) -> list[tuple]:
    """Up to `count` kept and `count` removed rows (spread over the pool) as (title, image, caption), a removed
    row titled with the first filter that removed it; none without a shard reader. Reads only the row groups
    that hold them (`kept_by_group`: write_subset's count of kept rows in each group)."""
    if reader is None or not kept_by_group:
        return []
    sizes = np.asarray(_checked_groups(pool, tables))
    ends = {True: np.cumsum(kept_by_group), False: np.cumsum(sizes - np.asarray(kept_by_group))}
    ranks = {kind: _spread(int(ends[kind][-1]), count) for kind in ends}  # the n-th kept (removed) rows shown
    wanted = sorted({int(np.searchsorted(ends[kind], rank, "right")) for kind in ends for rank in ranks[kind]})
    chosen = {True: [], False: []}
    for number, _, rows, decided in subset_groups(pool, tables, ["shard", "caption", "clip_score"], wanted):
        keep = np.logical_and.reduce([table["keep"].to_numpy() for table in decided.values()])
        for kind in (True, False):
            before = int(ends[kind][number - 1]) if number else 0
            positions = np.flatnonzero(keep == kind)
            for rank in ranks[kind][(ranks[kind] >= before) & (ranks[kind] < ends[kind][number])]:
                chosen[kind].append(_example(rows, decided, int(positions[rank - before]), kind, reader))
    return [example for kind in (True, False) for example in chosen[kind] if example is not None]


def _example(rows: pa.Table, decided: dict, row: int, kept: bool, reader) -> tuple | None:
    """A row's example; none for a row whose image is not downloaded or that is taken down."""
    if not kept and next(name for name, table in decided.items() if not table["keep"][row].as_py()) == TAKEDOWN:
        return None
    image = reader.image_bytes(rows["shard"][row].as_py(), rows["key"][row].as_py())
    if image is None:
        return None
    if kept:
        title = f"kept ({rows['clip_score'][row].as_py():.3f})"
    else:
        name = next(name for name, table in decided.items() if not table["keep"][row].as_py())
        detail = decided[name]["detail"][row].as_py()
        title = f"removed: {name}" + (f" ({detail})" if detail is not None else "")
    return title, image, rows["caption"][row].as_py()
