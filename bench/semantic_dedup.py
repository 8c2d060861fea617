"""Near-duplicate removal at scale: the workflow's jobs against the one-process version, on synthetic embeddings.

Rows are 512-d unit vectors around 1,000 centres (real embeddings cluster), written as fp16 shards like the
workflow's; a known share are planted near-copies (cosine ~0.97-0.99) of earlier rows of their shard. Each job
(centroids, assign per chunk of shards, pairs per group of clusters, decide) and the one-process version run in
a process of their own, one at a time, so that each one's peak memory is its own. Prints wall time and peak RSS
per kind of job, whether both ways made the same decisions, and how many planted copies were found.

    python bench/semantic_dedup.py --rows 1000000
"""

import argparse
import multiprocessing
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from clipflow.curate import near_duplicate_jobs as jobs
from clipflow.curate.near_duplicates import near_duplicates
from clipflow.embed import embedding_files


def synthetic_shards(folder: Path, rows: int, shard_rows: int, planted_share: float, seed: int = 0) -> None:
    """Writes image/NNNNNNNN.npy and planted.npy: (copy, original) row pairs, the original earlier in its shard."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, 512)).astype(np.float32)
    (folder / "image").mkdir()
    planted_pairs = []
    for number, start in enumerate(range(0, rows, shard_rows)):
        size = min(shard_rows, rows - start)
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
        np.save(folder / "image" / f"{number:08d}.npy", part.astype(np.float16))
    np.save(folder / "planted.npy", np.concatenate(planted_pairs))


def _anonymous_mb() -> float:
    """The resident memory this process allocated (RssAnon), without the pages of files it maps."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon:"))


def _measured(queue, step, args):
    peak, done = [0.0], threading.Event()

    def sample():  # every 10 ms: a shorter peak can be missed
        while not done.wait(0.01):
            peak[0] = max(peak[0], _anonymous_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    step(*args)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((seconds, peak_rss, max(peak[0], _anonymous_mb())))


def measure(step, *args) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and peak anonymous memory (MB, sampled) of `step(*args)` in a fresh process.
    Peak RSS counts the pages of files the step maps (memory-mapped embeddings, on-disk index lists), which the
    kernel may drop under pressure; anonymous memory is what the step itself holds."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measured, args=(queue, step, args))
    process.start()
    result = queue.get()
    process.join()
    return result


def print_jobs_table(figures: dict) -> None:
    """A markdown table of {kind of job: [measure(...) of each job]}."""
    print("| job | jobs | wall, all (s) | wall, longest (s) | peak RSS, largest (MB) | peak anonymous, largest (MB) |")
    print("|---|---|---|---|---|---|")
    for kind, runs in figures.items():
        seconds, rss, anonymous = zip(*runs)
        print(
            f"| {kind} | {len(runs)} | {sum(seconds):.1f} | {max(seconds):.1f} | {max(rss):,.0f} | {max(anonymous):,.0f} |"
        )
    print(f"| all jobs, one after another | | {sum(s for runs in figures.values() for s, _, _ in runs):.1f} | | | |")


def one_process(folder: Path, shards: list, options: dict, out: Path) -> None:
    parts = [np.load(path, mmap_mode="r") for path in embedding_files(folder, shards, "image")]
    np.save(out, near_duplicates(parts, options["threshold"], options["rows_per_cluster"], options["max_clusters"]))


def assign_job(folder, shards, layout_path, centroids_path, out):
    layout = jobs.read_layout(layout_path)
    jobs.write_assignment(folder, shards, "image", layout, np.load(centroids_path), out)


def pairs_job(assignments, layout_path, group, groups, threshold, out):
    jobs.write_pairs(assignments, jobs.read_layout(layout_path), group, groups, threshold, out)


def decide_job(pair_files, layout_path, out):
    jobs.write_decisions(pair_files, jobs.read_layout(layout_path), out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--shards-per-chunk", type=int, default=64)
    parser.add_argument("--cluster-groups", type=int, default=16)
    parser.add_argument("--planted-share", type=float, default=0.02)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--skip-one-process", action="store_true", help="only the jobs (the pool may not fit)")
    args = parser.parse_args()
    options = {"threshold": args.threshold, "modality": "image", "rows_per_cluster": 1000, "max_clusters": 50_000}
    options["seed"] = 0
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        started = time.perf_counter()
        measure(synthetic_shards, folder, args.rows, args.shard_rows, args.planted_share)
        shards = sorted(path.stem for path in (folder / "image").glob("*.npy"))
        print(f"wrote {args.rows:,} rows in {len(shards)} shards in {time.perf_counter() - started:.1f} s")

        out = folder / "jobs"
        out.mkdir()
        figures = {"centroids": [measure(jobs.write_centroids, folder, shards, options, out / "c.npy", out / "l.json")]}
        chunks = [shards[i : i + args.shards_per_chunk] for i in range(0, len(shards), args.shards_per_chunk)]
        for number, chunk in enumerate(chunks):
            (out / f"a{number}").mkdir()
            names = {kind: out / f"a{number}/{kind}.npy" for kind in ("vectors", "rows", "bounds")}
            figure = measure(assign_job, folder, chunk, out / "l.json", out / "c.npy", names)
            figures.setdefault("assign", []).append(figure)
        assignments = [out / f"a{number}" for number in range(len(chunks))]
        pair_files = [{"pairs": out / f"p{g}.npy", "bounds": out / f"b{g}.npy"} for g in range(args.cluster_groups)]
        for group, names in enumerate(pair_files):
            figure = measure(pairs_job, assignments, out / "l.json", group, args.cluster_groups, args.threshold, names)
            figures.setdefault("pairs", []).append(figure)
        figures["decide"] = [measure(decide_job, pair_files, out / "l.json", out / "d.npy")]
        duplicate_of = np.load(out / "d.npy")
        layout = jobs.read_layout(out / "l.json")

        print(f"{args.rows:,} rows, {layout['clusters']:,} clusters, threshold {args.threshold}")
        print_jobs_table(figures)
        if not args.skip_one_process:
            seconds, memory, anonymous = measure(one_process, folder, shards, options, folder / "single.npy")
            print(f"| one process (before) | 1 | {seconds:.1f} | {seconds:.1f} | {memory:,.0f} | {anonymous:,.0f} |")
            same = np.array_equal(np.load(folder / "single.npy"), duplicate_of)
            print(f"same decisions as one process: {same}")
        copies = np.load(folder / "planted.npy")[:, 0]
    removed = duplicate_of >= 0
    # a copy of a copy may point at the original's other copy: any removal of a planted row counts as found
    print(f"planted near-copies: {len(copies):,}, found {removed[copies].mean():.4f}; "
          f"other rows removed: {removed.sum() - removed[copies].sum():,}")  # fmt: skip


if __name__ == "__main__":
    main()
