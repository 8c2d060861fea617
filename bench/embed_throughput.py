"""Embedding throughput end to end: webdataset tars on disk to per-shard `.npy` files on disk.

Builds shards of 256x256 JPEGs (q95, as img2dataset writes them), runs the workflow's embedding step on them
(`clipflow.embed.embedder.embed_chunk`) and prints samples/s (image + text), where the time went (waiting
for the readers, decoding, launching the encoders, gathering, writing), the GPU's mean utilisation when there
is one, and the model alone in the same process (encoders fed tensors already on the device), per model:

    python bench/embed_throughput.py --samples 40000 --models ViT-B-32 ViT-L-14
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipflow.embed.embedder import embed_chunk
from clipflow.embed.model import fetch_model, load_model

CAPTION = "a photo of a {} dog playing with a red ball on the green grass in the park"


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((256, 256), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_shards(folder: Path, samples: int, shards: int) -> list[Path]:
    """Complete shards as the download step leaves them (tar, parquet, stats with the tar's record), which the
    embedding step checks before it reads a tar."""
    import pandas as pd

    from clipflow.shards import shard_name, tar_path, write_shard

    folder.mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        images = pool.map(_jpeg, range(samples), chunksize=256)
    per_shard = -(-samples // shards)
    tars = []
    for number in range(shards):
        shard, tar_samples, rows = shard_name(number), [], []
        for i in range(number * per_shard, min(samples, (number + 1) * per_shard)):
            caption, key = CAPTION.format(i), f"{shard}{i:05d}"
            meta = {"uid": f"{i:032x}", "url": f"http://x/{i}.jpg", "caption": caption, "key": key}
            tar_samples.append({"__key__": key, "jpg": images[i], "txt": caption, "json": json.dumps(meta)})
            rows.append({**meta, "status": "success", "error_message": None})
        write_shard(folder, shard, tar_samples, pd.DataFrame(rows), {"count": len(rows), "successes": len(rows)})
        tars.append(tar_path(folder, shard))
    return tars


class GpuUtilisation(threading.Thread):
    """Samples nvidia-smi's utilisation.gpu every 200 ms while the step runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stopping = [], threading.Event()

    def run(self):
        while not self.stopping.wait(0.2):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if out:
                self.samples.append(float(out[0]))

    def mean(self) -> float | None:
        self.stopping.set()
        self.join()
        return float(np.mean(self.samples)) if self.samples else None


def model_only(manifest: Path, precision: str, batch_size: int, seconds: float = 5) -> float:
    """Samples/s of the image and text towers alone, on inputs already on the device."""
    model = load_model(manifest, "auto", precision)
    pixels = torch.randn(batch_size, 3, *model.model.visual.image_size, device=model.device)
    tokens = model.tokenizer([CAPTION.format(i) for i in range(batch_size)]).to(model.device)
    done, started = 0, None
    while started is None or time.perf_counter() - started < seconds:
        model.encode_images(pixels)
        model.encode_texts(tokens)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if started is None:  # the first batch warms up
            started = time.perf_counter()
            continue
        done += batch_size
    return done / (time.perf_counter() - started)


def deviation_from_pil(out: Path, tar: Path, manifest: Path, rows: int = 64) -> tuple[float, float]:
    """Max |difference| and min cosine between the step's image embeddings and open_clip's own path (PIL
    preprocessing, fp32 on the CPU) for the first rows of a shard."""
    import pandas as pd
    import webdataset as wds

    from clipflow.embed import shard_outputs

    outputs = shard_outputs(out, tar.stem)
    keys = pd.read_parquet(outputs["metadata"])["key"].tolist()[:rows]
    ours = torch.from_numpy(np.load(outputs["image"])[:rows].astype(np.float32))
    images = {s["__key__"]: s["jpg"] for s in wds.WebDataset(str(tar), shardshuffle=False) if s["__key__"] in keys}
    reference = load_model(manifest, "cpu", "fp32")
    pixels = torch.stack([reference.preprocess(Image.open(io.BytesIO(images[key]))) for key in keys])
    theirs = reference.encode_images(pixels)
    return (ours - theirs).abs().max().item(), (ours * theirs).sum(dim=1).min().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count()))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    print(
        f"{args.samples} samples in {args.shards} shards, batch {args.batch_size}, {args.workers} workers, "
        f"{torch.cuda.get_device_name() if on_gpu else f'CPU ({os.cpu_count()} cores)'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tars = write_shards(tmp / "shards", args.samples, args.shards)
        for arch in args.models:
            manifest = tmp / f"{arch}.json"
            fetch_model(arch, "none", None, str(tmp), manifest)
            out = tmp / f"embeddings-{arch}"
            gpu = GpuUtilisation() if on_gpu else None
            if gpu:
                gpu.start()
            started = time.perf_counter()
            info = embed_chunk(
                tars,
                manifest,
                out,
                out / "info/chunk.json",
                [],
                args.precision,
                args.device,
                args.batch_size,
                args.workers,
            )
            wall = time.perf_counter() - started
            utilisation = gpu.mean() if gpu else None
            alone = model_only(manifest, args.precision, args.batch_size)
            seconds = info["seconds"]
            print(
                f"\n{arch} ({info['provenance']['precision']} on {info['provenance']['device']}, images prepared {info['images_prepared']}):"
            )
            print(
                f"  end to end        {info['samples_per_second']:>9,.0f} samples/s  (with model load and writing: {info['embedded'] / wall:,.0f})"
            )
            print(
                f"  model alone       {alone:>9,.0f} samples/s  -> end to end is {info['samples_per_second'] / alone:.0%} of it"
            )
            print("  main thread s     " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
            if utilisation is not None:
                print(
                    f"  GPU utilisation   {utilisation:>9.0f} % (mean of nvidia-smi samples; 0 where the driver reports none)"
                )
            largest, cosine = deviation_from_pil(out, tars[0], manifest)
            print(
                f"  vs open_clip's PIL path in fp32: max |difference| {largest:.4f}, min cosine {cosine:.5f} (64 images)"
            )
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
