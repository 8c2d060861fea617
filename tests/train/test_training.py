"""Training and evaluation on curated subsets: DataComp's hyperparameters handed to open_clip's trainer, the held-out
slice that no subset holds, and the small run (.test/config) trained and evaluated through Snakemake on the CPU."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import psutil
import pytest
import torch

from clipflow.config import validate_config
from clipflow.errors import ClipflowError
from clipflow.evaluate.benchmark import HOLDOUT_TASK, holdout_task, run_task
from clipflow.evaluate.datacomp.tasks import SUMMARY, TASKS
from clipflow.evaluate.datacomp.tasks import summary as datacomp_summary
from clipflow.evaluate.holdout import HELD_OUT, choose, held_out, lowest_hash_rows, slice_samples, uid_hashes
from clipflow.shards import ShardReader
from clipflow.train.hyperparameters import hyperparameters
from clipflow.train.run import command, latest_checkpoint, match_checkpoint, open_clip_args
from conftest import REPO, free_port, jpeg, run_snakemake, small_run_config, write_config, write_shard
from datacomp_evalsets import write_evalsets

SUBSET = "everything"  # what this module trains on: every row but the held-out ones


def train_section(**overrides) -> dict:
    config = validate_config({"input": {"paths": ["x.csv"]}, "train": overrides})
    return config["train"]


def test_a_scale_gives_datacomp_hyperparameters_and_each_can_be_overridden():
    xlarge = hyperparameters(train_section(scale="xlarge"))
    assert (xlarge["model"], xlarge["batch_size"], xlarge["lr"], xlarge["warmup"]) == ("ViT-L-14", 90112, 1e-3, 10000)
    assert (xlarge["beta2"], xlarge["precision"], xlarge["samples_seen"]) == (0.95, "amp_bfloat16", 12_800_000_000)
    small = hyperparameters(train_section(lr=1e-4, precision="bf16"))
    assert (small["model"], small["batch_size"], small["lr"], small["precision"]) == ("ViT-B-32", 4096, 1e-4, "bf16")
    assert small["beta2"] is None and small["checkpoints"] == 8


def test_open_clip_gets_checkpoints_as_epochs_and_the_global_batch_split_over_gpus(tmp_path):
    hyper = hyperparameters(train_section(scale="large"))
    shards = [tmp_path / f"{number:08d}.tar" for number in range(3)]
    args = open_clip_args(hyper, shards, tmp_path / "run", processes=4, workers=2)
    value = dict(zip(args, args[1:]))
    assert value["--train-data"] == f"{tmp_path}/{{00000000..00000002}}.tar"
    assert (value["--epochs"], value["--train-num-samples"]) == ("8", str(1_280_000_000 // 8))
    assert (value["--batch-size"], value["--model"], value["--resume"]) == ("2048", "ViT-B-16", "latest")
    assert "--dataset-resampled" in args and "--save-most-recent" in args and "--beta2" not in args
    with pytest.raises(ClipflowError, match="multiple of the 3 GPUs"):
        open_clip_args(hyper, shards, tmp_path / "run", processes=3, workers=2)


@pytest.mark.parametrize(
    "train, curate, message",
    [
        ({"subsets": ["nope"]}, {}, "train.subsets names 'nope'"),
        ({"subsets": ["small"]}, {"subsets": {"small": {"filters": []}}}, "needs reshard: true"),
        ({"model": "ViT-B-32", "model_config": "cfg/tiny.json"}, {}, "set train.model to that name"),
        ({"samples_seen": 4, "checkpoints": 8}, {}, "smaller than train.checkpoints"),
    ],
)
def test_training_settings_that_cannot_work_are_refused(train, curate, message):
    config = {"input": {"paths": ["x.csv"]}, "train": train, "curate": curate}
    with pytest.raises(ClipflowError, match=message):
        hyperparameters(validate_config(config)["train"])


def test_the_held_out_slice_keeps_its_rows_as_the_pool_grows():
    uids = pd.Series([f"{number:032x}" for number in range(20_000)])
    first = held_out(uids[:10_000], 0.1)
    grown = held_out(uids, 0.1)
    assert (grown[:10_000] == first).all()
    assert 0.09 < grown.mean() < 0.11


def test_the_slice_is_chosen_from_the_lowest_hashes_a_batch_at_a_time():
    """The held-out rows of lowest uid hash, found batch by batch holding `count` of them, are those that sorting
    every held-out row by hash gives first, in the same order (a repeated uid's rows in pool order)."""
    rng = np.random.default_rng(0)
    uids = pd.Series([f"{number:032x}" for number in rng.integers(0, 2**62, 5000)])
    uids[4000:4010] = uids[100]  # ties
    pool = pd.DataFrame({"uid": uids, "key": [f"{i:09d}" for i in range(len(uids))]})
    flags = held_out(pool["uid"], 0.3)
    ends = [0, 1, 700, 701, 2500, 5000]  # an empty batch and a batch of one among them
    batches = [(pool.iloc[a:b], flags[a:b]) for a, b in zip(ends, ends[1:])]
    expected = pool[flags].assign(hash=uid_hashes(pool["uid"][flags])).sort_values("hash", kind="stable")
    for count in (1, 10, 200, 10_000):
        lowest, held = lowest_hash_rows(iter(batches), count)
        assert held == flags.sum() and lowest["key"].tolist() == expected["key"].tolist()[:count]
    lowest, held = lowest_hash_rows(iter([]), 10)
    assert held == 0 and lowest.empty


def test_the_slice_reads_the_pool_again_where_its_lowest_hashes_have_no_image(tmp_path):
    """Only the held-out rows of highest hash have an image: the slice reads on until it finds them, and is what
    choosing from every held-out row gives."""
    keys = [f"00000000{i:04d}" for i in range(60)]
    pool = pd.DataFrame({"uid": [f"{i:032x}" for i in range(60)], "key": keys, "shard": "00000000", "caption": "x"})
    flags = held_out(pool["uid"], 0.5)
    by_hash = pool[flags].assign(hash=uid_hashes(pool["uid"][flags])).sort_values("hash")
    with_image = by_hash["key"].tolist()[-3:]
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards/00000000.tar", [(key, jpeg(seed=i), "x") for i, key in enumerate(with_image)])
    reader = ShardReader(tmp_path / "shards")
    reads = []

    def batches():
        reads.append(1)
        return iter([(pool.iloc[:25], flags[:25]), (pool.iloc[25:], flags[25:])])

    samples, held = slice_samples(batches, reader, 2)
    assert held == flags.sum() and samples["key"].tolist() == with_image[:2] and len(reads) > 1
    assert samples["key"].tolist() == choose(pool[flags], reader, 2)["key"].tolist()


def write_color_benchmark(folder: Path) -> None:
    """A local zero-shot classification data set in clip_benchmark's webdataset layout: demo images, classed by
    the colour of their shape."""
    import io

    import webdataset as wds

    from clipflow import demo

    colors = sorted(demo.COLORS)
    (folder / "test").mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(colors))
    (folder / "zeroshot_classification_templates.txt").write_text("a {c} shape\na photo of something {c}")
    with wds.TarWriter(str(folder / "test/0.tar")) as writer:
        for index in range(1000, 1024):
            image = io.BytesIO()
            demo.render(index).convert("RGB").save(image, format="JPEG")
            label = colors.index(demo.caption(index).split()[1])
            writer.write({"__key__": f"{index:08d}", "jpg": image.getvalue(), "cls": label})
    (folder / "test/nshards.txt").write_text("1")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("train")
    config = small_run_config(free_port())
    # Enough images that a few dozen steps learn what generalizes to the held-out slice (colours, shapes)
    config["demo"]["images"] = 120
    config["curate"]["filters"] = {"round_shapes": config["curate"]["filters"]["round_shapes"]}
    config["curate"]["subsets"] = {
        SUBSET: {"filters": [], "reshard": True},
        "round_shapes": {"filters": ["round_shapes"]},
    }
    config["train"].update(subsets=[SUBSET], batch_size=16, samples_seen=640)
    write_color_benchmark(workdir / "colors")
    config["evaluate"]["benchmarks"] = {"colors": {"dataset": "wds/colors", "root": str(workdir / "colors")}}
    write_evalsets(workdir / "evalsets")
    config["evaluate"].update(suite="datacomp", data_dir=str(workdir / "evalsets"))
    write_config(workdir, config)
    # no indices: training needs none
    run_snakemake(
        workdir, "--cores", "2", "results/evaluate/compare.tsv", "results/curate/subsets/round_shapes/kept.parquet"
    )
    return workdir, config


def test_training_writes_a_checkpoint_that_open_clip_loads_with_its_provenance(trained_run):
    workdir, config = trained_run
    folder = workdir / "results/train" / SUBSET
    open_clip.add_model_config(config["train"]["model_config"])
    model, _, _ = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(folder / "checkpoint.pt"))
    saved = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == config["train"]["checkpoints"]
    name, weights = next(iter(saved["state_dict"].items()))
    assert torch.equal(model.state_dict()[name.removeprefix("module.")], weights)
    provenance = json.loads((folder / "provenance.json").read_text())
    kept = json.loads((workdir / f"results/curate/subsets/{SUBSET}/shards/reshard.json").read_text())["samples"]
    assert provenance["subset"]["name"] == SUBSET and provenance["subset"]["samples"] == kept
    assert provenance["hyperparameters"]["lr"] == config["train"]["lr"]
    assert provenance["versions"]["open_clip_torch"] == open_clip.__version__


def test_held_out_rows_are_in_no_subset_and_are_downloaded(trained_run):
    workdir, _ = trained_run
    table = pd.read_parquet(workdir / "results/evaluate/held_out.parquet")
    held = set(table["key"][~table["keep"]])
    assert held
    for subset in ("round_shapes", SUBSET):
        folder = workdir / "results/curate/subsets" / subset
        assert not held & set(pd.read_parquet(folder / "kept.parquet")["key"])
        assert not held & set(pd.read_parquet(folder / "removed.parquet")["key"])
        assert next(iter(json.loads((folder / "summary.json").read_text())["filters"])) == HELD_OUT
    samples = pd.read_parquet(workdir / "results/evaluate/holdout/samples.parquet")
    assert 2 <= len(samples) and set(samples["key"]) <= held


def test_the_trained_model_retrieves_better_than_random_weights_on_the_held_out_slice(trained_run, tmp_path):
    workdir, config = trained_run
    scores = json.loads((workdir / f"results/evaluate/{SUBSET}.json").read_text())[HOLDOUT_TASK]
    held_out_images = len(pd.read_parquet(workdir / "results/evaluate/holdout/samples.parquet"))
    recall_k = [k for k in (1, 5, 10) if k <= held_out_images]
    assert set(scores) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in recall_k}
    open_clip.add_model_config(config["train"]["model_config"])
    torch.manual_seed(0)
    untrained = open_clip.create_model("tiny-clip")
    torch.save({"state_dict": untrained.state_dict()}, tmp_path / "random.pt")
    task = holdout_task(workdir / "results/evaluate/holdout")
    random = run_task("tiny-clip", tmp_path / "random.pt", task, config["train"]["model_config"], 64)
    trained_total, random_total = sum(scores.values()), sum(random.values())
    assert trained_total > random_total, (scores, random)
    table = pd.read_csv(workdir / "results/evaluate/compare.tsv", sep="\t")
    assert table["subset"].tolist() == [SUBSET]
    assert np.isclose(table[f"{HOLDOUT_TASK}/image_retrieval_recall@1"].iat[0], scores["image_retrieval_recall@1"])


def test_a_local_clip_benchmark_data_set_is_evaluated_and_compared(trained_run):
    workdir, _ = trained_run
    colors = json.loads((workdir / f"results/evaluate/{SUBSET}.json").read_text())["colors"]
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(colors)
    assert 0 <= colors["acc1"] <= colors["acc5"] <= 1
    table = pd.read_csv(workdir / "results/evaluate/compare.tsv", sep="\t")
    assert np.isclose(table["colors/acc1"].iat[0], colors["acc1"])


def test_datacomps_tasks_and_summary_are_evaluated_and_compared(trained_run):
    workdir, _ = trained_run
    scores = json.loads((workdir / f"results/evaluate/{SUBSET}.json").read_text())
    main = {task.name: scores[task.name]["main_metric"] for task in TASKS}
    assert scores[SUMMARY] == datacomp_summary(main) and 0 <= scores[SUMMARY]["Average"] <= 1
    table = pd.read_csv(workdir / "results/evaluate/compare.tsv", sep="\t")
    assert table[f"{SUMMARY}/Average"].iat[0] == pytest.approx(scores[SUMMARY]["Average"], rel=1e-12)
    assert table["FMoW/main_metric"].iat[0] == pytest.approx(scores["FMoW"]["acc_worst_region"], rel=1e-12)
    assert "FMoW/acc_avg" not in table  # a suite's task shows its main metric only


def test_a_killed_training_job_resumes_from_its_last_checkpoint(trained_run):
    workdir, config = trained_run
    longer = copy.deepcopy(config)
    longer["train"].update(samples_seen=4 * 160, checkpoints=4)
    write_config(workdir, longer)
    checkpoints = workdir / "results/train" / SUBSET / "run/open_clip/checkpoints"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", str(workdir / "config.yaml"), "--cores", "2", f"results/train/{SUBSET}/checkpoint.pt"]
    started = time.time()
    output = (workdir / "killed_run.out").open("w+")
    running = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)

    def new_checkpoint() -> bool:  # the fixture's run left one, which the new settings start over from
        try:
            return (checkpoints / "epoch_latest.pt").stat().st_mtime > started
        except FileNotFoundError:
            return False

    deadline = time.time() + 300
    while not new_checkpoint() and running.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert running.poll() is None, "training finished before it could be killed"
    for process in psutil.Process(running.pid).children(recursive=True):  # the job, as SLURM kills it at its limit
        process.kill()
    running.wait(timeout=120)
    printed = (workdir / "killed_run.out").read_text()
    assert running.returncode != 0 and "Error in rule train" in printed, printed[-3000:]
    killed_at = torch.load(checkpoints / "epoch_latest.pt", map_location="cpu", weights_only=False)["epoch"]
    assert 1 <= killed_at < 4
    run_snakemake(workdir, "--cores", "2", f"results/train/{SUBSET}/checkpoint.pt")
    log = (workdir / f"logs/train/{SUBSET}.log").read_text()
    assert "resuming: " in log and "=> resuming checkpoint" in log and f"(epoch {killed_at})" in log
    assert "Start epoch 0" not in log and f"Start epoch {killed_at}" in log
    final = torch.load(workdir / f"results/train/{SUBSET}/checkpoint.pt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 4
    assert json.loads((workdir / f"results/train/{SUBSET}/provenance.json").read_text())["resumed"] is True


def test_training_over_several_nodes_needs_a_slurm_allocation(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    hyper = hyperparameters(train_section(scale="small"))
    with pytest.raises(ClipflowError, match="train.nodes is 2: .* only as a SLURM job"):
        command(hyper, [], processes=1, nodes=2)


def test_a_run_resumed_on_more_processes_gets_a_checkpoint_they_can_load(tmp_path):
    """open_clip saves a one-process run's state_dict without DDP's "module." prefix and loads it on several
    processes only with it: GPUs and nodes are sizing settings, so a resumed run may have more."""
    path = latest_checkpoint(tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "state_dict": {"visual.proj": torch.ones(2)}}, path)
    match_checkpoint(tmp_path, 1)
    assert list(torch.load(path, weights_only=False)["state_dict"]) == ["visual.proj"]
    match_checkpoint(tmp_path, 2)
    match_checkpoint(tmp_path, 4)  # once
    resumed = torch.load(path, weights_only=False)
    assert list(resumed["state_dict"]) == ["module.visual.proj"] and resumed["epoch"] == 1
