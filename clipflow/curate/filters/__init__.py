"""Curation filters, one module per kind (see base.py for the contract), found here by their `kind`."""

import importlib
import pkgutil

import numpy as np
import pyarrow as pa

from clipflow import files
from clipflow.curate.filters.base import Filter
from clipflow.curate.pool import POOL_ROWS, pool_batches
from clipflow.errors import ClipflowError

# A filter's table: each pool row's key, whether the filter keeps it, and why not (or what a kept row matched).
TABLE_SCHEMA = pa.schema([("key", pa.string()), ("keep", pa.bool_()), ("detail", pa.string())])


def _kinds() -> dict[str, type[Filter]]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return {kind.kind: kind for kind in Filter.__subclasses__()}


KINDS = _kinds()


def make_filter(options: dict) -> Filter:
    return KINDS[options["kind"]](options)


def options_schema() -> dict:
    """The JSON schema of one entry of curate.filters: a known kind, then that kind's options."""
    return {
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": sorted(KINDS)}},
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind.kind}}},
                "then": {
                    "description": kind.description,
                    "additionalProperties": False,
                    "required": list(kind.required),
                    "properties": {"kind": {}, **kind.options_schema},
                },
            }
            for kind in KINDS.values()
        ],
    }


def run_filter(options: dict, pool, array_paths: list, table_path) -> dict:
    """One configured filter over the pool (a parquet file), a row group at a time: writes its table (key, keep,
    detail), aligned with the pool group by group, and returns its record (options, counts, and what the filter
    resolved, e.g. the threshold a top_fraction gave). `array_paths`: the .npy files it reads besides the pool (the
    embeddings, in pool order, or its own jobs' result), memory-mapped."""
    chosen = make_filter(options)
    resolved = chosen.resolve(pool)
    arrays = RowRange([np.load(path, mmap_mode="r") for path in array_paths]) if array_paths else None
    rows, kept, counts = 0, 0, {}
    with files.RowGroupWriter(table_path, TABLE_SCHEMA, POOL_ROWS) as writer:
        for group in pool_batches(pool):
            if arrays is not None and arrays.rows < rows + len(group):
                raise ClipflowError(f"filter {options['kind']}: its arrays hold {arrays.rows} rows, the pool more")
            embeddings = arrays.take(rows, rows + len(group)) if arrays is not None else None
            decision = chosen.decide(group, embeddings, resolved)
            detail = decision.detail if decision.detail is not None else [None] * len(group)
            writer.write(pa.table({"key": group["key"], "keep": decision.keep, "detail": detail}, TABLE_SCHEMA))
            rows, kept = rows + len(group), kept + int(decision.keep.sum())
            for name, values in decision.counts.items():
                for value, count in values.items():
                    counts.setdefault(name, {})[value] = counts.get(name, {}).get(value, 0) + count
    if arrays is not None and arrays.rows != rows:
        raise ClipflowError(f"filter {options['kind']}: its arrays hold {arrays.rows} rows, the pool {rows}")
    return {"options": options, **resolved, **counts, "rows": rows, "kept": kept, "removed": rows - kept}


class RowRange:
    """Arrays of consecutive rows (one per shard) read as one: rows [start, end) of their concatenation."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(array) for array in arrays])
        self.rows = int(self.starts[-1])

    def take(self, start: int, end: int) -> np.ndarray:
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        for i in range(max(first, 0), len(self.arrays)):
            if self.starts[i] >= end:
                break
            parts.append(self.arrays[i][max(start - self.starts[i], 0) : end - self.starts[i]])
        if not parts:
            return np.asarray(self.arrays[-1][:0])
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
