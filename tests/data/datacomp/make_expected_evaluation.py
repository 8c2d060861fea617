"""Writes the expected scores of tests/train/test_datacomp_evaluation.py with DataComp's own evaluate.py
(mlfoundations/datacomp, `--use_model`) on the sets and checkpoint of tests/train/datacomp_evalsets.py. Run by
hand, from the repository root, without a GPU (the fixtures are CPU numbers):

    .venv/bin/python tests/data/datacomp/make_expected_evaluation.py PATH/TO/datacomp PATH/TO/SITE

SITE holds, first on the path, the packages as DataComp pins them where they install on Python 3.11
(`pip install --target SITE --no-deps` of clip-benchmark==1.4.0, webdataset==0.2.31, wilds==2.0.0, ogb, outdated,
littleutils, cloudpathlib==0.13.0, huggingface_hub==0.36.0, and datasets==4.0.0 with dill==0.3.8,
multiprocess==0.70.16, fsspec==2025.3.0, xxhash: DataComp's datasets 2.8 does not run on this numpy and pyarrow).
torch, open_clip, scikit-learn and numpy are the venv's. DataComp also evaluates FairFace and UTKFace, which
have no main metric; they get a small set each here so that evaluate.py runs unchanged. It first checks that no
decision of a metric rests on a near tie (datacomp_evalsets.MARGIN), so that the expected scores hold on any CPU.
The output is evaluation.jsonl (evaluate.py's eval_results.jsonl), evaluation_summary.json (aggregate_scores.py's
scores) and predictions.json (the checkpoint's predictions that some sets' labels follow).
"""

import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
DATACOMP, SITE = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path.insert(0, str(HERE.parents[1] / "train"))

import datacomp_evalsets  # noqa: E402

FAIRFACE_CLASSES = {"race": ["White", "Black", "East Asian"], "gender": ["man", "woman"], "age": ["child", "adult"]}
FAIRFACE_CLASSES["toxic"] = [f"thing {number}" for number in range(20)]


def write_fairface(folder: Path, rng: np.random.Generator) -> None:
    import webdataset as wds

    (folder / "test").mkdir(parents=True)
    names = [f"{objective}:{name}" for objective, names in FAIRFACE_CLASSES.items() for name in names]
    (folder / "classnames.txt").write_text("\n".join(names) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text(
        "\n".join(f"{objective}:a photo of a {{c}}" for objective in FAIRFACE_CLASSES) + "\n"
    )
    (folder / "test/nshards.txt").write_text("1")
    with wds.TarWriter(str(folder / "test/0.tar")) as writer:
        for number in range(12):
            extension, data = datacomp_evalsets.image_bytes(rng, number)
            metadata = np.array([rng.integers(0, 2), rng.integers(0, 2), rng.integers(0, 3), rng.integers(0, 2)])
            writer.write({"__key__": f"{number:05d}", extension: data, "npy": metadata})


def near(scores: np.ndarray, best: float) -> bool:
    return bool((np.abs(scores - best) < datacomp_evalsets.MARGIN).any())


def near_at(scores: np.ndarray, rank: int, same) -> bool:
    """Whether one of the `rank` highest of `scores` is near one of the others, unless `same(i, j)` says that
    which of the two wins changes no metric."""
    order = np.argsort(-scores, kind="stable")
    return any(
        abs(scores[i] - scores[j]) < datacomp_evalsets.MARGIN and not same(i, j)
        for i in order[:rank]
        for j in order[rank:]
    )


def near_ties(sets: Path, checkpoint: Path) -> list[str]:
    """Every decision a metric takes between two competitors whose scores (cosine similarities) are closer than
    MARGIN and whose order changes the metric: in classification the best class against the next and the fifth
    against the sixth (a class name twice ties with itself, argmax and topk keeping the first); in retrieval an
    image's best caption against other images' captions and a caption's image against the others; in WinoGAViL
    the last image chosen against the first left out (two copies of an image that are both associations, or
    neither, change nothing)."""
    import open_clip
    import torch
    from clip_benchmark.metrics import zeroshot_classification as zsc

    from clipflow.evaluate.datacomp import classification
    from clipflow.evaluate.datacomp.hf_cache import decode_image, read_table
    from clipflow.evaluate.datacomp.retrieval import prompt
    from clipflow.evaluate.datacomp.tasks import CLASSIFICATION, RETRIEVAL, TASKS

    open_clip.add_model_config(str(datacomp_evalsets.MODEL_CONFIG))
    model, _, transform = open_clip.create_model_and_transforms(datacomp_evalsets.MODEL, pretrained=str(checkpoint))
    tokenizer, found = open_clip.get_tokenizer(datacomp_evalsets.MODEL), []
    model.eval()
    for task in TASKS:
        folder = task.location(sets)
        if task.kind == CLASSIFICATION:
            classes = classification.lines(folder / "classnames.txt")
            templates = classification.lines(folder / "zeroshot_classification_templates.txt")
            classifier = zsc.zero_shot_classifier(model, tokenizer, classes, templates, "cpu", amp=False)
            batches = (batch[:2] for batch in classification.loader(folder, transform, 64, False))
            logits, _ = zsc.run_classification(model, classifier, batches, "cpu", amp=False)
            for number, row in enumerate((logits / model.logit_scale.exp()).detach().numpy()):
                if any(near_at(row, rank, lambda i, j: classes[i] == classes[j]) for rank in (1, 5)):
                    found.append(f"{task.name} sample {number}")
        elif task.kind == RETRIEVAL:
            rows = read_table(folder, task.hub_name).to_pylist()
            owner = np.repeat(np.arange(len(rows)), [len(row["caption"]) for row in rows])
            with torch.no_grad():
                images = torch.stack([transform(decode_image(row["image"])) for row in rows])
                texts = tokenizer([caption for row in rows for caption in row["caption"]])
                scores = (model.encode_image(images, normalize=True) @ model.encode_text(texts, normalize=True).T)
            scores = scores.numpy()
            for image, row in enumerate(scores):
                if near(row[owner != image], row[owner == image].max()):
                    found.append(f"{task.name} image {image}")
            for text, column in enumerate(scores.T):
                if near(np.delete(column, owner[text]), column[owner[text]]):
                    found.append(f"{task.name} caption {text}")
        else:
            for number, row in enumerate(read_table(folder, task.hub_name).to_pylist()):
                with torch.no_grad():
                    images = torch.stack([transform(decode_image(image)) for image in row["candidate_images"]])
                    cue = model.encode_text(tokenizer([prompt(row["cue"])]), normalize=True)
                    scores = (cue @ model.encode_image(images, normalize=True).T)[0].numpy()
                associated = np.isin(row["candidates"], row["associations"])
                if near_at(scores, int(associated.sum()), lambda i, j: associated[i] == associated[j]):
                    found.append(f"{task.name} example {number}")
    return found


def main() -> None:
    work = Path(tempfile.mkdtemp())
    datacomp_evalsets.write_checkpoint(work / "checkpoint.pt")
    predictions = {}
    datacomp_evalsets.write_evalsets(work / "sets", datacomp_evalsets.predictor(work / "checkpoint.pt", predictions))
    ties = near_ties(work / "sets", work / "checkpoint.pt")
    if ties:
        sys.exit(f"decisions on a near tie, which another CPU may take the other way: {', '.join(ties)}")
    for number, name in enumerate(["fairface", "utkface"]):
        write_fairface(work / "sets" / f"wds_{name}_test", np.random.default_rng(100 + number))
    runner = (
        "import open_clip, runpy, sys;"
        f"open_clip.add_model_config({str(datacomp_evalsets.MODEL_CONFIG)!r});"
        "sys.argv = ['evaluate.py'] + sys.argv[1:];"
        f"runpy.run_path({str(DATACOMP / 'evaluate.py')!r}, run_name='__main__')"
    )
    arguments = ["--train_output_dir", str(work / "out"), "--data_dir", str(work / "sets"), "--batch_size", "64"]
    arguments += ["--use_model", f"{datacomp_evalsets.MODEL} {work / 'checkpoint.pt'}"]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SITE), str(DATACOMP)]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    subprocess.run([sys.executable, "-c", runner, *arguments], check=True, cwd=DATACOMP, env=environment)
    results = (work / "out" / "eval_results.jsonl").read_text()
    datacomp_evalsets.PREDICTIONS.write_text(json.dumps(predictions) + "\n")
    (HERE / "evaluation.jsonl").write_text(results)
    sys.path[:0] = [str(SITE), str(DATACOMP)]
    aggregate = runpy.run_path(str(DATACOMP / "aggregate_scores.py"))["get_aggregate_scores"]
    summary = {name: float(score) for name, score in aggregate(str(work / "out" / "eval_results.jsonl")).items()}
    (HERE / "evaluation_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
