"""Writes the expected scores of tests/train/test_datacomp_evaluation.py with DataComp's own evaluate.py
(mlfoundations/datacomp, `--use_model`) on the sets and checkpoint of tests/train/datacomp_evalsets.py. Run by
hand, from the repository root, without a GPU (the fixtures are CPU numbers):

    .venv/bin/python tests/data/datacomp/make_expected_evaluation.py PATH/TO/datacomp PATH/TO/SITE

SITE holds, first on the path, the packages as DataComp pins them where they install on Python 3.11
(`pip install --target SITE --no-deps` of clip-benchmark==1.4.0, webdataset==0.2.31, wilds==2.0.0, ogb, outdated,
littleutils, cloudpathlib==0.13.0, huggingface_hub==0.36.0, and datasets==4.0.0 with dill==0.3.8,
multiprocess==0.70.16, fsspec==2025.3.0, xxhash: DataComp's datasets 2.8 does not run on this numpy and pyarrow).
torch, open_clip, scikit-learn and numpy are the venv's. DataComp also evaluates FairFace and UTKFace, which
have no main metric; they get a small set each here so that evaluate.py runs unchanged. The output is
evaluation.jsonl (evaluate.py's eval_results.jsonl) and evaluation_summary.json (aggregate_scores.py's scores).
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


def main() -> None:
    work = Path(tempfile.mkdtemp())
    datacomp_evalsets.write_checkpoint(work / "checkpoint.pt")
    datacomp_evalsets.write_evalsets(work / "sets", work / "checkpoint.pt")
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
        **datacomp_evalsets.CPU_KERNELS,
    }
    subprocess.run([sys.executable, "-c", runner, *arguments], check=True, cwd=DATACOMP, env=environment)
    results = (work / "out" / "eval_results.jsonl").read_text()
    (HERE / "evaluation.jsonl").write_text(results)
    sys.path[:0] = [str(SITE), str(DATACOMP)]
    aggregate = runpy.run_path(str(DATACOMP / "aggregate_scores.py"))["get_aggregate_scores"]
    summary = {name: float(score) for name, score in aggregate(str(work / "out" / "eval_results.jsonl")).items()}
    (HERE / "evaluation_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
