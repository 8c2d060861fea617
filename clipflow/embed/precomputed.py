"""Precomputed embeddings: DataComp's `.npz` beside each metadata parquet (b32_img, b32_txt, l14_img, l14_txt,
row for row with the parquet) read into the embeddings folder's per-shard files, for every planned row.

The files are the ones the embedding step writes (clipflow.embed), so the pool, filters, subsets, semantic dedup
and the indices run unchanged, and from metadata alone: no row needs downloading first. A row's key is the one
its download will have (clipflow.shards.plan_keys), so the subset's rows find their images after the download.

One job holds one metadata file's two arrays at a time (its shards' rows come from one file after another) plus
one shard's rows and vectors: its memory is bounded by the largest metadata file, whatever the pool's size.
"""

import logging
import time
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd

from clipflow import files
from clipflow.embed import shard_outputs
from clipflow.errors import ClipflowError
from clipflow.ingest.planner import Plan
from clipflow.shards import plan_keys

log = logging.getLogger(__name__)


def npz_path(metadata_path: str) -> str:
    """DataComp's layout: `NAME.npz` beside `NAME.parquet`."""
    stem = metadata_path[: -len(".parquet")] if metadata_path.endswith(".parquet") else metadata_path
    return stem + ".npz"


def load_arrays(metadata_path: str, arrays: dict[str, str], rows: int) -> dict[str, np.ndarray]:
    """The named arrays of the .npz beside `metadata_path`, checked: present, 2-D, one row per metadata row."""
    path = npz_path(metadata_path)
    try:
        with fsspec.open(path, "rb") as f, np.load(f) as npz:
            present = list(npz.files)
            missing = [name for name in arrays.values() if name not in present]
            if missing:
                raise ClipflowError(f"{path}: no array {missing[0]!r} for embed.precomputed (it has {present})")
            loaded = {modality: npz[name] for modality, name in arrays.items()}
            uids = npz["uid"] if "uid" in present else None
    except FileNotFoundError:
        raise ClipflowError(
            f"{path}: no such file; embed.precomputed reads the .npz beside each metadata file "
            "(DataComp: download_upstream.py --download_npz)"
        ) from None
    except (OSError, ValueError) as error:
        raise ClipflowError(f"{path}: not a readable .npz: {error}") from None
    for modality, array in loaded.items():
        if array.ndim != 2 or len(array) != rows:
            raise ClipflowError(
                f"{path}: array {arrays[modality]!r} has shape {array.shape}, where its metadata file "
                f"{metadata_path} has {rows} rows: the .npz must hold one embedding per metadata row, in order"
            )
    dims = {array.shape[1] for array in loaded.values()}
    if len(dims) > 1:
        raise ClipflowError(f"{path}: the image and text arrays {list(arrays.values())} differ in width ({dims})")
    return {**loaded, "uid": uids}


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float16)


def read_precomputed_chunk(
    plan: Plan, shards: list[str], arrays: dict[str, str], columns: list[str], model: dict, folder, record
) -> dict:
    """Write each shard's image, text and metadata files under `folder` from the .npz arrays of its rows'
    metadata files (aligned by source row; by uid too where the .npz holds uids), then `record`. `model` names
    the model that computed them (embed.model, embed.pretrained), for the provenance."""
    started = time.perf_counter()
    sources = plan.state["sources"]
    loaded, loaded_source, used = None, None, set()
    per_shard = {}
    for shard in shards:
        rows = pd.read_parquet(plan.shard_path(shard))
        image = text = None
        for source in rows["source"].unique():
            if source != loaded_source:  # one file's arrays at a time
                loaded = load_arrays(sources[source]["path"], arrays, sources[source]["rows"])
                loaded_source = source
                used.add(sources[source]["path"])
            mask = (rows["source"] == source).to_numpy()
            at = rows["source_row"].to_numpy()[mask]
            _check_uids(loaded["uid"], at, rows["uid"].to_numpy()[mask], sources[source]["path"])
            if image is None:
                width = loaded["image"].shape[1]
                image, text = (np.empty((len(rows), width), np.float32) for _ in range(2))
            image[mask] = loaded["image"][at]
            text[mask] = loaded["text"][at]
        metadata = rows[["uid", "url", "caption", *columns]].reset_index(drop=True)
        metadata.insert(3, "key", plan_keys(shard, len(rows)))
        metadata.insert(4, "shard", shard)
        outputs = shard_outputs(folder, shard)
        for path in outputs.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        for modality, vectors in (("image", image), ("text", text)):
            with files.replacing(outputs[modality]) as tmp, open(tmp, "wb") as f:
                np.save(f, _normalized(vectors))
        files.write_parquet(metadata, outputs["metadata"])
        per_shard[shard] = len(rows)
    seconds = time.perf_counter() - started
    embedded = sum(per_shard.values())
    info = {
        "provenance": {**model, "device": "precomputed", "precomputed": arrays, "sources": sorted(used)},
        "shards": shards,
        "embedded": embedded,
        "decode_failed": 0,
        "decode_failures": [],
        "per_shard": per_shard,
        "seconds": {"model_load": 0.0, "embedding": seconds},
        "samples_per_second": embedded / max(seconds, 1e-9),
        **files.written_record([p for s in shards for p in shard_outputs(folder, s).values()], relative_to=folder),
    }
    Path(record).parent.mkdir(parents=True, exist_ok=True)
    files.write_json(record, info)
    log.info("read %d precomputed embeddings for %d shards in %.1f s", embedded, len(shards), seconds)
    return info


def _check_uids(npz_uids, at: np.ndarray, uids: np.ndarray, metadata_path: str) -> None:
    if npz_uids is None:
        return
    found = npz_uids[at].astype(str)
    wrong = np.flatnonzero(found != uids.astype(str))
    if len(wrong):
        raise ClipflowError(
            f"{npz_path(metadata_path)}: row {int(at[wrong[0]])} has uid {found[wrong[0]]!r} where "
            f"{metadata_path} has {uids[wrong[0]]!r}: the .npz is not this file's"
        )
