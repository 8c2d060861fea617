"""Curation filters, one module per kind (see base.py for the contract), found here by their `kind`."""

import importlib
import pkgutil

import pyarrow as pa

from clipflow import files
from clipflow.curate.filters.base import Filter
from clipflow.curate.pool import POOL_ROWS, pool_batches_with
from clipflow.index.vectors import StoredVectors

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


def run_filter(options: dict, pool, arrays: StoredVectors | None, table_path) -> dict:
    """One configured filter over the pool (a parquet file), a row group at a time: writes its table (key, keep,
    detail), aligned with the pool group by group, and returns its record (options, counts, and what the filter
    resolved, e.g. the threshold a top_fraction gave). `arrays`: the .npy files it reads besides the pool (the
    embeddings, in pool order, or its own jobs' result), if any."""
    chosen = make_filter(options)
    resolved = chosen.resolve(pool)
    rows, kept, counts = 0, 0, {}
    with files.RowGroupWriter(table_path, TABLE_SCHEMA, POOL_ROWS) as writer:
        for group, embeddings in pool_batches_with(pool, arrays, f"filter {options['kind']}"):
            decision = chosen.decide(group, embeddings, resolved)
            detail = decision.detail if decision.detail is not None else [None] * len(group)
            writer.write(pa.table({"key": group["key"], "keep": decision.keep, "detail": detail}, TABLE_SCHEMA))
            rows, kept = rows + len(group), kept + int(decision.keep.sum())
            for name, values in decision.counts.items():
                for value, count in values.items():
                    counts.setdefault(name, {})[value] = counts.get(name, {}).get(value, 0) + count
    return {"options": options, **resolved, **counts, "rows": rows, "kept": kept, "removed": rows - kept}
