"""Embed downloaded shards: per shard, image and text embeddings aligned row for row with a metadata parquet.

One job embeds a chunk of consecutive shards with the model loaded once, and writes each shard's files
(`image/NNNNNNNN.npy`, `text/NNNNNNNN.npy`, `metadata/NNNNNNNN.parquet`), so a shard's tar and its
embeddings pair up by name; the chunk's record, written last, says the chunk is complete.

DataLoader workers read the tars and tokenize captions. JPEG bytes become model input through one
`ImagePipeline` (open_clip's preprocessing on tensors): on a GPU in the main process, a batch at a time with
nvjpeg; on the CPU inside the workers, with the same code. On a GPU the image and text towers run on their
own CUDA streams, results come back through pinned memory, and a background thread gathers them, so
decoding, encoding and copying overlap. Each batch carries its own metadata, so rows never shift against the
embeddings; rows are written in key order. A sample no decoder reads is dropped from all three outputs and
counted.
"""

import contextlib
import json
import logging
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import webdataset as wds

from clipflow import files, shards as shard_format
from clipflow.embed import shard_outputs
from clipflow.embed.images import ImagePipeline
from clipflow.embed.model import LoadedModel, load_model
from clipflow.progress import Progress
from clipflow.shards import SAMPLE_FIELDS, sample_row, shard_of

log = logging.getLogger(__name__)
PREPARERS = 4  # threads decoding on the GPU side by side


class _Collate:
    """In a worker: a batch's metadata rows and tokens, and its images: the JPEG bytes (for the GPU to
    decode) or, with a CPU pipeline, the model input made here."""

    def __init__(self, tokenizer, kept_columns, cpu_pipeline: ImagePipeline | None):
        self.tokenizer, self.kept_columns, self.cpu_pipeline = tokenizer, kept_columns, cpu_pipeline

    def __call__(self, samples):
        rows = [sample_row(sample, self.kept_columns) for sample in samples]
        tokens = self.tokenizer([row["caption"] for row in rows])
        images, errors = [sample.get("jpg", b"") for sample in samples], {}
        if self.cpu_pipeline is not None:
            images, errors = self.cpu_pipeline(images)
        return rows, images, errors, tokens


def _loader(tars: list[Path], model: LoadedModel, kept_columns, batch_size: int, workers: int, collate: _Collate):
    # Never more workers than shards: a worker without a shard would find no samples.
    workers = min(workers, len(tars))
    dataset = wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False).batched(
        batch_size, collation_fn=collate, partial=True
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=model.device.type == "cuda",
        prefetch_factor=(4 if model.device.type == "cuda" else 2) if workers else None,
    )


def _stream(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()  # the CPU has none


class _Preparer(threading.Thread):
    """Takes the loader's batches and, on a GPU, decodes and resizes their images there, on a stream of its
    own, a few batches ahead of the encoders (on the CPU the workers have done it all: `pipeline` is None).
    Several run side by side: the GPU decoder's host-side work takes a CPU core per batch."""

    def __init__(self, batches, lock: threading.Lock, pipeline: ImagePipeline | None, prepared: queue.Queue):
        super().__init__(daemon=True)
        self.loader_batches, self.lock, self.pipeline = batches, lock, pipeline
        self.stream = torch.cuda.Stream() if pipeline is not None else None
        self.batches = prepared
        self.seconds = {"read": 0.0, "decode": 0.0}
        self.error: BaseException | None = None

    def run(self):
        try:
            while True:
                mark = time.perf_counter()
                with self.lock:
                    batch = next(self.loader_batches, None)
                self.seconds["read"] += time.perf_counter() - mark
                if batch is None:
                    break
                rows, images, errors, tokens = batch
                mark = time.perf_counter()
                ready = None
                if self.pipeline is not None:
                    with torch.cuda.stream(self.stream):
                        images, errors = self.pipeline(images)
                        ready = torch.cuda.Event()
                        ready.record(self.stream)
                self.seconds["decode"] += time.perf_counter() - mark
                self.batches.put((rows, images, errors, tokens, ready))
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self.error = error
        finally:
            self.batches.put(None)


class _Encoder:
    """The model on its device: image and text towers on their own CUDA streams when there is a GPU, results
    copied into a ring of pinned host buffers (allocating pinned memory per batch would stall the GPU)."""

    def __init__(self, model: LoadedModel, batch_size: int, buffers: int = 6):
        self.model = model
        self.cuda = model.device.type == "cuda"
        self.streams = (torch.cuda.Stream(), torch.cuda.Stream()) if self.cuda else (None, None)
        dim = model.model.visual.output_dim
        self.free: queue.Queue = queue.Queue()
        for _ in range(buffers):
            self.free.put(
                tuple(torch.empty((batch_size, dim), dtype=torch.float16, pin_memory=self.cuda) for _ in "it")
            )

    def __call__(self, pixels: torch.Tensor, tokens: torch.Tensor, ready):
        """Starts encoding; returns the host buffers that will hold the float16 image and text embeddings,
        and an event that marks them filled (None on the CPU, where they are filled on return)."""
        buffers = self.free.get()
        count = len(pixels)
        image_stream, text_stream = self.streams
        if self.cuda:
            for stream in self.streams:
                stream.wait_event(ready)
            pixels.record_stream(image_stream)
        towers = ((image_stream, self.model.encode_images, pixels), (text_stream, self.model.encode_texts, tokens))
        for buffer, (stream, encode, inputs) in zip(buffers, towers):
            with _stream(stream):
                buffer[:count].copy_(encode(inputs).half(), non_blocking=self.cuda)
        done = None
        if self.cuda:
            image_stream.wait_stream(text_stream)
            done = torch.cuda.Event()
            done.record(image_stream)
        return buffers, count, done


class _Gatherer(threading.Thread):
    """Waits for each batch's copies to the host and keeps the embeddings, off the thread that feeds the GPU."""

    def __init__(self, free_buffers: queue.Queue):
        super().__init__(daemon=True)
        self.free_buffers = free_buffers
        self.batches: queue.Queue = queue.Queue()
        self.rows, self.image, self.text = [], [], []
        self.error: BaseException | None = None

    def run(self):
        while (batch := self.batches.get()) is not None:
            rows, (image, text), count, done = batch
            try:
                if done is not None:
                    done.synchronize()
                self.rows += rows
                self.image.append(image[:count].numpy().copy())
                self.text.append(text[:count].numpy().copy())
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error
            finally:
                self.free_buffers.put((image, text))


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
    `record` (provenance, counts, throughput and where the time went, decode failures). `precision` changes
    the embeddings; device, batch size and workers only size the work."""
    started = time.perf_counter()
    tars = [Path(t) for t in tars]
    for tar in tars:  # a truncated tar would fail mid-job in a worker; name it before loading the model
        shard_format.check_intact(tar.parent, shard_of(tar))
    written = {shard_of(tar): _written_samples(tar) for tar in tars}
    model = load_model(manifest, device, precision)
    on_gpu = model.device.type == "cuda"
    collate = _Collate(model.tokenizer, kept_columns, None if on_gpu else ImagePipeline(model.preprocess, "cpu"))
    batches = iter(_loader(tars, model, kept_columns, batch_size, workers, collate))
    lock, prepared = threading.Lock(), queue.Queue(maxsize=4)
    preparers = [
        _Preparer(batches, lock, ImagePipeline(model.preprocess, model.device) if on_gpu else None, prepared)
        for _ in range(PREPARERS if on_gpu else 1)
    ]
    encoder = _Encoder(model, batch_size)
    gatherer = _Gatherer(encoder.free)
    for thread in (*preparers, gatherer):
        thread.start()
    loaded = time.perf_counter()
    progress = Progress(f"embedding {len(tars)} shards from {tars[0].name}", sum(written.values()), "samples")
    log.info("%s: %d samples on %s, batches of %d", progress.what, progress.total, model.device, batch_size)
    failures, waiting, encoding, running = [], 0.0, 0.0, len(preparers)
    while running:
        mark = time.perf_counter()
        batch = prepared.get()
        waiting += time.perf_counter() - mark
        if batch is None:
            running -= 1
            continue
        rows, pixels, errors, tokens, ready = batch
        failures += [{**rows[position], "error": error} for position, error in sorted(errors.items())]
        progress.add(len(rows), {"decode failed": len(errors)} if errors else None)
        good = [position for position in range(len(rows)) if position not in errors]
        if not good:
            continue
        mark = time.perf_counter()
        buffers, count, done = encoder(pixels, tokens[good] if len(good) < len(rows) else tokens, ready)
        gatherer.batches.put(([rows[position] for position in good], buffers, count, done))
        encoding += time.perf_counter() - mark
    loop_end = time.perf_counter()
    gatherer.batches.put(None)
    gatherer.join()
    for thread in (*preparers, gatherer):
        if thread.error:
            raise thread.error
    finished = time.perf_counter()
    seconds = {key: sum(p.seconds[key] for p in preparers) for key in ("read", "decode")}
    seconds.update(wait=waiting, encode=encoding, gather=finished - loop_end)

    dim = model.model.visual.output_dim
    image = np.concatenate(gatherer.image) if gatherer.image else np.empty((0, dim), np.float16)
    text = np.concatenate(gatherer.text) if gatherer.text else np.empty((0, dim), np.float16)
    metadata = pd.DataFrame(gatherer.rows, columns=[*SAMPLE_FIELDS, "shard", *kept_columns])
    # img2dataset writes samples as their downloads finish and workers interleave shards: sorting by
    # key makes the outputs' row order the same in every run.
    order = np.argsort(metadata["key"].to_numpy(dtype=str), kind="stable")
    image, text, metadata = image[order], text[order], metadata.iloc[order].reset_index(drop=True)
    shards = [shard_of(t) for t in tars]
    _check_counts(tars, written, metadata, failures)
    for shard in shards:
        _write_shard(folder, shard, (metadata["shard"] == shard).to_numpy(), image, text, metadata)
    seconds.update(model_load=loaded - started, embedding=finished - loaded, write=time.perf_counter() - finished)
    info = {
        "provenance": model.provenance,
        "shards": shards,
        "embedded": len(metadata),
        "decode_failed": len(failures),
        "decode_failures": failures,
        "per_shard": {s: int((metadata["shard"] == s).sum()) for s in shards},
        "seconds": seconds,
        "samples_per_second": len(metadata) / max(finished - loaded, 1e-9),
        "batch_size": batch_size,
        "images_prepared": "on the GPU" if on_gpu else "by the CPU workers",
        **files.written_record([p for s in shards for p in shard_outputs(folder, s).values()], relative_to=folder),
    }
    Path(record).parent.mkdir(parents=True, exist_ok=True)
    files.write_json(record, info)
    log.info(
        "embedded %d samples from %d shards at %.0f samples/s (%d failed to decode)",
        len(metadata),
        len(tars),
        info["samples_per_second"],
        len(failures),
    )
    return info


def _written_samples(tar: Path) -> int:
    """The samples the tar's writer recorded (its stats file)."""
    return json.loads(shard_format.stats_path(tar.parent, shard_of(tar)).read_text())["clipflow_tar"]["samples"]


def _check_counts(tars: list[Path], written: dict[str, int], metadata: pd.DataFrame, failures: list[dict]) -> None:
    """Every sample that each tar's writer recorded was read: embedded or reported as a decode failure."""
    read = metadata["shard"].value_counts().to_dict()
    for failure in failures:
        read[failure["shard"]] = read.get(failure["shard"], 0) + 1
    for tar in tars:
        shard = shard_of(tar)
        if read.get(shard, 0) != written[shard]:
            raise shard_format.DamagedShard(
                f"{tar}: damaged, {read.get(shard, 0)} samples read where {written[shard]} were written; "
                "run `clipflow verify --remove-damaged` on its folder, then rerun the workflow"
            )


def _write_shard(folder, shard: str, rows: np.ndarray, image, text, metadata: pd.DataFrame) -> None:
    outputs = shard_outputs(folder, shard)
    for path in outputs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    for kind, vectors in (("image", image), ("text", text)):
        with files.replacing(outputs[kind]) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors[rows])
    files.write_parquet(metadata[rows].reset_index(drop=True), outputs["metadata"])
