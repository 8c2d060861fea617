"""Tiny stand-ins for DataComp's 38 scored evaluation sets, in the layout its download_evalsets.py writes
(wds_<task>_test/ webdatasets, and Hugging Face's cache under hf_cache/), built to break a reimplementation of
DataComp's evaluation: class-name files with blank lines, stray spaces, duplicate and non-English names (exact
ties between classes); sets of fewer than five classes (no acc5); a set in more shards than DataComp's four
workers; PNG, JPEG and WebP images in grayscale, palette, RGBA and odd sizes; WILDS and fairness metadata with
empty groups, a group of one and FMoW's "Other" region; retrieval captions in capitals, other scripts, with control
characters and a varying number per image; an image with an EXIF rotation; WinoGAViL cues starting with a vowel,
a capital or a non-ASCII letter, with 5, 6, 10 and 12 candidates, two of them the same image.

No score decides a metric by a hair: float32 results differ in their last bits from one CPU to another (AVX-512
or AVX2 kernels, MKL's paths on Intel and AMD), so a near tie would make DataComp's expected scores a property of
the machine that computed them. Ties are built in only where they are exact on any CPU (a class name twice,
each class's prompts embedded in a batch of their own) or where their order changes no metric (a caption twice
for one image; two copies of a WinoGAViL image, both associations or neither). No caption is shared by two
images: the copies, embedded at two places of a batch, may differ by an ulp. The labels that follow the
model's predictions follow them as make_expected_evaluation.py recorded them (PREDICTIONS), not as this machine
computes them; that script checks every decision's margin before it writes the expected scores.

And a deterministic checkpoint of .test/config/tiny-clip.json (weights from numpy's PCG64, so the same on any
torch). Shared by test_datacomp_evaluation.py and tests/data/datacomp/make_expected_evaluation.py, which runs
DataComp's own evaluate.py on the same sets and checkpoint.
"""

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa

from clipflow.evaluate.datacomp.tasks import CLASSIFICATION, RETRIEVAL, TASKS

MODEL = "tiny-clip"
MARGIN = 1e-5  # the least gap between scores that a metric's decision rests on; CPUs differ by ~2e-7
PREDICTIONS = Path(__file__).parents[1] / "data/datacomp/predictions.json"  # {task key: the class of each sample}
MODEL_CONFIG = Path(__file__).parents[2] / ".test/config/tiny-clip.json"
FEW_CLASSES = {"vtab/kitti_closest_vehicle_distance": 4, "vtab/pcam": 2, "renderedsst2": 2, "wilds/camelyon17": 2}
FEW_CLASSES.update({"wilds/fmow": 3, "fairness/geode": 3})  # groups of a few samples get accuracies above 0
GROUPED_SAMPLES = 60  # a set with metadata: its groups of about 8 to 17 samples
SHARDS = {"imagenet1k": 5, "vtab/cifar100": 2}
# "red car" twice: the checkpoint's favourite class, tied exactly with itself (argmax takes the first)
CLASS_NAMES = ["cat", "dog", " house ", "Fahrrad", "red car", "貓", "ÉCOLE", "tree", "red car", "sea"]
TEMPLATES = "a photo of a {c}.\n\n  a blurry {c}  \nA PICTURE OF THE {c}\n"
METADATA = {  # a metadata row per sample: (columns, how many values each takes)
    "wilds/iwildcam": 9,
    "wilds/camelyon17": 3,
    "wilds/fmow": 3,
    "fairness/dollar_street": 3,
    "fairness/geode": 2,
}
CAPTIONS = [
    "a dog runs on the beach",
    "A RED CAR PARKED OUTSIDE",
    "ein Hund im Schnee",
    "猫がソファで寝ている",
    "two\tpeople\x00walking\x85home",
    "a\u00a0house\u2003with a garden",
    "",
    "the sea at dusk\n",
]
CUES = ["Apple", "sea", "ÉTÉ", "umbrella", "dog", "Ice", "wheel", "night"]


def image_bytes(rng: np.random.Generator, number: int) -> tuple[str, bytes]:
    """One image: its webdataset extension and bytes, in a format, mode and size that turn with `number`."""
    width, height = [(24, 24), (40, 17), (7, 64), (64, 64), (1, 30)][number % 5]
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(pixels)
    image = [image, image.convert("L"), image.convert("P"), image.convert("RGBA"), image][number % 5]
    extension, format = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")][number % 3]
    if format == "JPEG" and image.mode in ("P", "RGBA"):
        image = image.convert("RGB")
    data = io.BytesIO()
    image.save(data, format=format, **({"lossless": True} if format == "WEBP" else {}))
    return extension, data.getvalue()


def write_classification(task, folder: Path, rng: np.random.Generator, predict) -> None:
    import webdataset as wds

    classes = CLASS_NAMES[: FEW_CLASSES.get(task.key, len(CLASS_NAMES))]
    (folder / "test").mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(classes[:3]) + "\n\n" + "\n".join(classes[3:]) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text(TEMPLATES)
    shards = SHARDS.get(task.key, 1)
    (folder / "test/nshards.txt").write_text(str(shards))
    samples = 0
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"test/{shard}.tar")) as writer:
            for _ in range(GROUPED_SAMPLES if task.key in METADATA else int(rng.integers(9, 15))):
                extension, data = image_bytes(rng, samples)
                sample = {"__key__": f"{shard}_{samples:05d}", extension: data}
                if task.key in METADATA:
                    predicted = predict(task.key, samples, data, classes)
                    sample["npy"] = metadata_row(task.key, samples, rng)
                    sample["cls"] = grouped_label(task.key, sample["npy"], predicted, len(classes), rng)
                else:
                    sample["cls"] = int(rng.integers(0, len(classes) - 1))  # the last class never appears
                writer.write(sample)
                samples += 1


def metadata_row(key: str, number: int, rng: np.random.Generator) -> np.ndarray:
    """DataComp's metadata columns; the grouping column's values leave group 1 empty and give group 4 one sample."""
    row = rng.integers(0, 6, METADATA[key]).astype(np.int64)
    row[GROUP_COLUMN.get(key, 0)] = [0, 2, 3, 5, 2, 0, 3][number % 7] if number != 3 else 4
    return row


GROUP_COLUMN = {"wilds/camelyon17": 1}  # the others group by their first column
OTHER_REGION = 5  # FMoW's "Other"


def grouped_label(key: str, metadata: np.ndarray, predicted: int, classes: int, rng: np.random.Generator) -> int:
    """A label the model gets right about two times in three, so that groups differ: always in the group of one,
    never in FMoW's "Other" region (its worst region, if "Other" counts)."""
    group = metadata[GROUP_COLUMN.get(key, 0)]
    if key == "wilds/fmow" and group == OTHER_REGION:
        label = (predicted + 1) % classes
    elif group == 4 or rng.random() < 0.65:
        label = predicted
    else:
        label = int(rng.integers(0, classes))
    if key.startswith("wilds/"):
        metadata[-1] = label  # the y column
    return label


def write_hf_table(hf_cache: Path, hub_name: str, table: pa.Table, features: dict, old_layout=False) -> None:
    """`table` as datasets' cache holds a hub data set's test split (what load_dataset reads back offline); in
    datasets 2.8's layout if `old_layout`."""
    namespace, name = hub_name.split("/")
    folder, prefix = hf_cache / f"{namespace}___{name}/default/0.0.0/0123456789abcdef0123456789abcdef01234567", name
    if old_layout:
        folder, prefix = hf_cache / f"{namespace}___parquet/{namespace}--{name}-0123abcd/0.0.0/4567ef", "parquet"
    folder.mkdir(parents=True)
    schema = table.schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    with pa.OSFile(str(folder / f"{prefix}-test.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table.cast(schema))
    info = {
        "features": features,
        "builder_name": "parquet",
        "dataset_name": name,
        "config_name": "default",
        "version": {"version_str": "0.0.0", "major": 0, "minor": 0, "patch": 0},
        "splits": {"test": {"name": "test", "num_bytes": table.nbytes, "num_examples": table.num_rows}},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info))


IMAGE = {"_type": "Image"}
STRINGS = {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image_cell(rng: np.random.Generator, number: int, rotated: bool = False) -> dict:
    _, data = image_bytes(rng, number)
    if rotated:  # an EXIF orientation (6: rotate 90 degrees) that datasets applies when it decodes
        image, exif, out = PIL.Image.open(io.BytesIO(data)).convert("RGB"), PIL.Image.Exif(), io.BytesIO()
        exif[0x0112] = 6
        image.save(out, format="JPEG", exif=exif)
        data = out.getvalue()
    return {"bytes": data, "path": None}


def write_retrieval(task, hf_cache: Path, rng: np.random.Generator) -> None:
    images, captions = [], []
    for number in range(int(rng.integers(10, 14))):
        images.append(image_cell(rng, number, rotated=number == 2))
        count = 5 if "flickr" in task.key else int(rng.integers(1, 7))
        drawn = [CAPTIONS[int(index)] for index in rng.integers(0, len(CAPTIONS), count)]
        captions.append([own_caption(caption, number) for caption in drawn])
    table = pa.table({"image": pa.array(images, IMAGE_TYPE), "caption": pa.array(captions, pa.list_(pa.string()))})
    write_hf_table(hf_cache, task.hub_name, table, {"image": IMAGE, "caption": STRINGS})


def own_caption(caption: str, number: int) -> str:
    """`caption` made the image's own, by a number in front that the tokenizer's context keeps (the first image
    keeps them as they are, the empty one included)."""
    return caption if number == 0 else f"{number} {caption}"


def write_winogavil(task, hf_cache: Path, rng: np.random.Generator) -> None:
    rows = {"candidate_images": [], "cue": [], "candidates": [], "associations": []}
    for number, size in enumerate([5, 6, 10, 12, 10, 5, 12, 6, 10, 12, 5, 10]):
        names = [f"item{number}_{index}" for index in range(size)]
        associations = list(rng.choice(names[1:], int(rng.integers(1, 4 if size <= 6 else 5)), replace=False))
        images = [image_cell(rng, number * 13 + index) for index in range(size)]
        images[1] = images[0]  # two candidates tie (near exactly: they are embedded at two places of a batch) ...
        if names[1] in associations:  # ... and both are associations, or neither, so their order changes nothing
            associations.append(names[0])
        rows["candidate_images"].append(images)
        rows["cue"].append(CUES[number % len(CUES)])
        rows["candidates"].append(names)
        rows["associations"].append(associations)
    table = pa.table(
        {
            "candidate_images": pa.array(rows["candidate_images"], pa.list_(IMAGE_TYPE)),
            "cue": pa.array(rows["cue"]),
            "candidates": pa.array(rows["candidates"], pa.list_(pa.string())),
            "associations": pa.array(rows["associations"], pa.list_(pa.string())),
        }
    )
    features = {"candidate_images": {"feature": IMAGE, "_type": "List"}, "cue": {"dtype": "string", "_type": "Value"}}
    write_hf_table(hf_cache, task.hub_name, table, {**features, "candidates": STRINGS, "associations": STRINGS})


def write_evalsets(data_dir: Path, predict=None) -> None:
    """Every scored task's set under `data_dir`, as download_evalsets.py lays them out; the labels of sets with
    group metrics follow the checkpoint's predictions in part: `predict` (task key, sample number, image bytes,
    class names) -> class, by default those recorded in PREDICTIONS."""
    if predict is None:
        recorded = json.loads(PREDICTIONS.read_text())
        predict = lambda key, number, data, classes: recorded[key][number]  # noqa: E731
    for number, task in enumerate(TASKS):
        rng = np.random.default_rng(number)
        if task.kind == CLASSIFICATION:
            write_classification(task, task.location(data_dir), rng, predict)
        elif task.kind == RETRIEVAL:
            write_retrieval(task, task.location(data_dir), rng)
        else:
            write_winogavil(task, task.location(data_dir), rng)


def write_checkpoint(path: Path) -> None:
    """tiny-clip with weights drawn by numpy (layer norms at 1 and 0, the logit scale as open_clip sets it)."""
    import open_clip
    import torch

    open_clip.add_model_config(str(MODEL_CONFIG))
    model = open_clip.create_model(MODEL)
    rng = np.random.default_rng(2026)
    state = model.state_dict()
    for name, tensor in state.items():
        if name == "logit_scale" or ("ln" in name and tensor.dim() == 1):
            continue
        tensor.copy_(torch.from_numpy(rng.standard_normal(tuple(tensor.shape)).astype(np.float32) * 0.1))
    torch.save({"state_dict": state}, path)


def predictor(checkpoint: Path, recorded: dict):
    """write_evalsets' `predict`: the class the checkpoint's model finds nearest (the first template only), kept
    in `recorded` too."""
    import open_clip
    import torch

    open_clip.add_model_config(str(MODEL_CONFIG))
    model, _, transform = open_clip.create_model_and_transforms(MODEL, pretrained=str(checkpoint))
    tokenizer = open_clip.get_tokenizer(MODEL)

    @torch.no_grad()
    def predict(key: str, number: int, data: bytes, classes: list[str]) -> int:
        texts = model.encode_text(tokenizer([TEMPLATES.splitlines()[0].format(c=name) for name in classes]))
        image = model.encode_image(transform(PIL.Image.open(io.BytesIO(data)))[None])
        recorded.setdefault(key, []).append(int((image @ texts.T).argmax()))
        assert len(recorded[key]) == number + 1
        return recorded[key][number]

    return predict
