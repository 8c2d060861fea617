"""Embed downloaded shards: image and text embeddings aligned row for row with a metadata parquet.

One job embeds a chunk of consecutive shards with the model loaded once. Tar reading, JPEG decoding,
preprocessing and tokenization run in DataLoader workers; each batch carries its own metadata, so
the rows written can never shift against the embeddings. Rows are written in key order. A sample whose image fails to decode is
dropped from all three outputs and counted.
"""

import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from PIL import Image

from clipflow.model import LoadedModel, load_model

log = logging.getLogger(__name__)
METADATA_FIELDS = ("uid", "url", "caption", "key")


def _shard_of(sample) -> str:
    return Path(sample["__url__"]).name.removesuffix(".tar")


class _Prepare:
    """Decode and preprocess one sample in a worker; a sample that fails to decode keeps its metadata."""

    def __init__(self, preprocess, kept_columns):
        self.preprocess, self.kept_columns = preprocess, kept_columns

    def __call__(self, sample):
        meta = json.loads(sample["json"])
        row = {field: meta.get(field) for field in METADATA_FIELDS}
        row["caption"] = sample["txt"].decode("utf-8") if "txt" in sample else row["caption"] or ""
        row["shard"] = _shard_of(sample)
        row.update({column: meta.get(column) for column in self.kept_columns})
        try:
            with Image.open(io.BytesIO(sample["jpg"])) as image:
                pixels = self.preprocess(image.convert("RGB"))
        except Exception as error:  # any undecodable image is dropped and counted, never misaligned
            return row, None, f"{type(error).__name__}: {error}"
        return row, pixels, None


class _Collate:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples):
        good = [(row, pixels) for row, pixels, error in samples if error is None]
        failed = [(row, error) for row, pixels, error in samples if error is not None]
        rows = [row for row, _ in good]
        pixels = torch.stack([p for _, p in good]) if good else None
        tokens = self.tokenizer([row["caption"] for row in rows]) if good else None
        return rows, pixels, tokens, failed


def _loader(tars: list[Path], model: LoadedModel, options: dict, kept_columns: list[str]):
    # Never more workers than shards: a worker without a shard would find no samples.
    workers = min(options["workers"], len(tars))
    dataset = (
        wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
        .map(_Prepare(model.preprocess, kept_columns))
        .batched(options["batch_size"], collation_fn=_Collate(model.tokenizer), partial=True)
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, pin_memory=model.device.type == "cuda"
    )


def embed_chunk(tars: list[Path | str], manifest: Path | str, options: dict, kept_columns: list[str], outputs) -> dict:
    """Embed `tars` into outputs.image, outputs.text (.npy, float16), outputs.metadata (.parquet), outputs.info."""
    started = time.perf_counter()
    tars = [Path(t) for t in tars]
    model = load_model(manifest, options["device"], options["precision"])
    loaded = time.perf_counter()
    image_parts, text_parts, rows, failures = [], [], [], []
    for batch_rows, pixels, tokens, failed in _loader(tars, model, options, kept_columns):
        failures += [{**row, "error": error} for row, error in failed]
        if pixels is None:
            continue
        image_parts.append(model.encode_images(pixels).cpu().numpy().astype(np.float16))
        text_parts.append(model.encode_texts(tokens).cpu().numpy().astype(np.float16))
        rows += batch_rows
    finished = time.perf_counter()
    dim = model.model.visual.output_dim
    image = np.concatenate(image_parts) if image_parts else np.empty((0, dim), np.float16)
    text = np.concatenate(text_parts) if text_parts else np.empty((0, dim), np.float16)
    metadata = pd.DataFrame(rows, columns=[*METADATA_FIELDS, "shard", *kept_columns])
    # img2dataset writes samples as their downloads finish and workers interleave shards: sorting by
    # key makes the outputs' row order the same in every run.
    order = np.argsort(metadata["key"].to_numpy(dtype=str), kind="stable")
    image, text, metadata = image[order], text[order], metadata.iloc[order].reset_index(drop=True)
    shards = [t.name.removesuffix(".tar") for t in tars]
    info = {
        "provenance": model.provenance,
        "shards": shards,
        "embedded": len(rows),
        "decode_failed": len(failures),
        "decode_failures": failures,
        "per_shard": {s: int((metadata["shard"] == s).sum()) for s in shards},
        "seconds": {"model_load": loaded - started, "embedding": finished - loaded},
        "samples_per_second": len(rows) / max(finished - loaded, 1e-9),
        "batch_size": options["batch_size"],
    }
    _write_atomically(outputs.image, lambda f: np.save(f, image))
    _write_atomically(outputs.text, lambda f: np.save(f, text))
    _write_atomically(outputs.metadata, lambda f: metadata.to_parquet(f, index=False))
    _write_atomically(outputs.info, lambda f: f.write(json.dumps(info, indent=1).encode()))
    log.info(
        "embedded %d samples from %d shards at %.0f samples/s (%d failed to decode)",
        len(rows),
        len(tars),
        info["samples_per_second"],
        len(failures),
    )
    return info


def _write_atomically(path, write) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
