"""Near-duplicate removal at scale: time, peak memory and accuracy on synthetic embeddings.

Rows are 512-d unit vectors around 1,000 centres (real embeddings cluster), written as fp16 chunks like
the workflow's; a known share are planted near-copies (cosine ~0.97-0.99) of earlier rows of their chunk. Prints how many
planted copies were found and how many other rows were removed.

    python bench/semantic_dedup.py --rows 1000000
"""

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from clipflow.curate.near_duplicates import near_duplicates


def synthetic_chunks(folder: Path, rows: int, chunk_rows: int, planted_share: float, seed: int = 0) -> None:
    """Writes the chunks and planted.npy: (copy, original) row pairs, the original earlier in its chunk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, 512)).astype(np.float32)
    planted_pairs = []
    for number, start in enumerate(range(0, rows, chunk_rows)):
        size = min(chunk_rows, rows - start)
        # spread 0.9 around a centre: rows of one cluster sit at cosine ~0.55 of each other
        part = centres[rng.integers(0, 1000, size)] + 0.9 * rng.standard_normal((size, 512)).astype(np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        copies = np.flatnonzero(rng.random(size) < planted_share)
        copies = copies[copies > 0]
        originals = (rng.random(len(copies)) * copies).astype(int)
        noise = rng.uniform(0.004, 0.008, (len(copies), 1)) * rng.standard_normal((len(copies), 512))
        for copy, original, jitter in zip(copies, originals, noise.astype(np.float32)):  # in order: copies of copies
            part[copy] = part[original] + jitter
            part[copy] /= np.linalg.norm(part[copy])
        planted_pairs.append(np.stack([start + copies, start + originals], axis=1))
        np.save(folder / f"{number:08d}.npy", part.astype(np.float16))
    np.save(folder / "planted.npy", np.concatenate(planted_pairs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--planted-share", type=float, default=0.02)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        # in a child process, so that this process's peak memory is the dedup's own
        writer = multiprocessing.get_context("spawn").Process(
            target=synthetic_chunks, args=(Path(folder), args.rows, args.chunk_rows, args.planted_share)
        )
        writer.start()
        writer.join()
        paths = sorted(p for p in Path(folder).glob("0*.npy"))
        copies = np.load(Path(folder) / "planted.npy")[:, 0]
        print(f"wrote {args.rows:,} rows in {len(paths)} chunks in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        duplicate_of = near_duplicates([np.load(p, mmap_mode="r") for p in paths], args.threshold)
        seconds = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    removed = duplicate_of >= 0
    # a copy of a copy may point at the original's other copy: any removal of a planted row counts as found
    found = removed[copies].mean()
    others = removed.sum() - removed[copies].sum()
    print(
        f"{args.rows:,} rows, threshold {args.threshold}: {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s), "
        f"peak RSS {rss:,.0f} MB"
    )
    print(f"planted near-copies: {len(copies):,}, found {found:.4f}; other rows removed: {others:,}")


if __name__ == "__main__":
    main()
