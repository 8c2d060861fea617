"""Embed downloaded shards: per shard, image and text embeddings aligned row for row with a metadata parquet.

One job embeds a chunk of consecutive shards with the model loaded once, and writes each shard's files
(`image/NNNNNNNN.npy`, `text/NNNNNNNN.npy`, `metadata/NNNNNNNN.parquet`), so a shard's tar and its
embeddings pair up by name; the chunk's record, written last, says the chunk is complete. Tar reading, JPEG
decoding, preprocessing and tokenization run in DataLoader workers; each batch carries its own metadata, so
the rows written can never shift against the embeddings. Rows are written in key order. A sample whose
image fails to decode is dropped from all three outputs and counted.
"""

import io
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from PIL import Image

from clipflow import files
from clipflow.embed import shard_outputs
from clipflow.embed.model import LoadedModel, load_model
from clipflow.shards import SAMPLE_FIELDS, sample_row, shard_of

log = logging.getLogger(__name__)


class _Prepare:
    """Decode and preprocess one sample in a worker; a sample that fails to decode keeps its metadata."""

    def __init__(self, preprocess, kept_columns):
        self.preprocess, self.kept_columns = preprocess, kept_columns

    def __call__(self, sample):
        row = sample_row(sample, self.kept_columns)
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


def _loader(tars: list[Path], model: LoadedModel, kept_columns: list[str], batch_size: int, workers: int):
    # Never more workers than shards: a worker without a shard would find no samples.
    workers = min(workers, len(tars))
    dataset = (
        wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
        .map(_Prepare(model.preprocess, kept_columns))
        .batched(batch_size, collation_fn=_Collate(model.tokenizer), partial=True)
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, pin_memory=model.device.type == "cuda"
    )


def embed_chunk(
    tars: list[Path | str],
    manifest: Path | str,
    folder: Path | str,
    record: Path | str,
    kept_columns: list[str],
    precision: str,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 4,
) -> dict:
    """Embed `tars` into each shard's files under `folder` (float16 .npy, metadata .parquet), then write
    `record` (provenance, counts, throughput, decode failures). `precision` changes the embeddings;
    device, batch size and workers only size the work."""
    started = time.perf_counter()
    tars = [Path(t) for t in tars]
    model = load_model(manifest, device, precision)
    loaded = time.perf_counter()
    image_parts, text_parts, rows, failures = [], [], [], []
    for batch_rows, pixels, tokens, failed in _loader(tars, model, kept_columns, batch_size, workers):
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
    metadata = pd.DataFrame(rows, columns=[*SAMPLE_FIELDS, "shard", *kept_columns])
    # img2dataset writes samples as their downloads finish and workers interleave shards: sorting by
    # key makes the outputs' row order the same in every run.
    order = np.argsort(metadata["key"].to_numpy(dtype=str), kind="stable")
    image, text, metadata = image[order], text[order], metadata.iloc[order].reset_index(drop=True)
    shards = [shard_of(t) for t in tars]
    for shard in shards:
        _write_shard(folder, shard, (metadata["shard"] == shard).to_numpy(), image, text, metadata)
    info = {
        "provenance": model.provenance,
        "shards": shards,
        "embedded": len(rows),
        "decode_failed": len(failures),
        "decode_failures": failures,
        "per_shard": {s: int((metadata["shard"] == s).sum()) for s in shards},
        "seconds": {"model_load": loaded - started, "embedding": finished - loaded},
        "samples_per_second": len(rows) / max(finished - loaded, 1e-9),
        "batch_size": batch_size,
    }
    Path(record).parent.mkdir(parents=True, exist_ok=True)
    files.write_json(record, info)
    log.info(
        "embedded %d samples from %d shards at %.0f samples/s (%d failed to decode)",
        len(rows),
        len(tars),
        info["samples_per_second"],
        len(failures),
    )
    return info


def _write_shard(folder, shard: str, rows: np.ndarray, image, text, metadata: pd.DataFrame) -> None:
    outputs = shard_outputs(folder, shard)
    for path in outputs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    for kind, vectors in (("image", image), ("text", text)):
        with files.replacing(outputs[kind]) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors[rows])
    files.write_parquet(metadata[rows].reset_index(drop=True), outputs["metadata"])
