"""Curation filters, one module per kind (see base.py for the contract), found here by their `kind`."""

import importlib
import pkgutil

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Filter


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


def run_filter(options: dict, pool: pd.DataFrame, array_paths: list) -> tuple[pd.DataFrame, dict]:
    """One configured filter over the pool: a table (key, keep, detail) aligned with the pool, and an info
    record (options, counts, and what the filter resolved, e.g. the threshold a top_fraction gave).
    `array_paths`: the .npy files it reads (the embeddings, or its own jobs' result), memory-mapped."""
    embeddings = [np.load(path, mmap_mode="r") for path in array_paths]
    decision = make_filter(options).decide(pool, embeddings)
    keep = decision.keep
    info = {
        "options": options,
        **decision.info,
        "rows": len(pool),
        "kept": int(keep.sum()),
        "removed": int((~keep).sum()),
    }
    table = pd.DataFrame({"key": pool["key"], "keep": keep, "detail": decision.detail})
    return table, info
