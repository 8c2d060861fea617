"""The evaluation sets DataComp reads through Hugging Face's `datasets` (Flickr, MSCOCO, WinoGAViL), read from the
cache that `datasets.load_dataset("nlphuji/<name>", cache_dir=<data_dir>/hf_cache)` leaves, as
download_evalsets.py calls it. datasets 2.14 and later write
<namespace>___<name>/<config>/<version>/<hash>/<name>-test[-NNNNN-of-NNNNN].arrow; DataComp's pin, datasets 2.8,
wrote a hub data set without a script through its "parquet" builder, as
<namespace>___parquet/<namespace>--<name>[-<hash>]/<version>/<hash>/parquet-test[-...].arrow (its builder's
_relative_data_dir). Both are read.

The arrow files are read here, memory-mapped, rather than through `datasets` itself, whose releases pin pyarrow
and fsspec versions that clipflow's other libraries are past. Images are decoded as `datasets.Image` decodes them
(4.x): opened from their bytes, turned upright when their EXIF says so."""

import io
from pathlib import Path

import pyarrow as pa

SPLIT = "test"


def arrow_files(hf_cache: Path | str, hub_name: str) -> list[Path]:
    """The test split's arrow files of `hub_name` in the cache: those of its most recently written version."""
    namespace, name = hub_name.split("/")
    layouts = [  # (the glob of its versions' folders, their files' prefix)
        (f"{namespace}___{name}/*/*/*", name),
        (f"{namespace}___parquet/{namespace}--{name}/*/*", "parquet"),
        (f"{namespace}___parquet/{namespace}--{name}-*/*/*", "parquet"),
    ]
    versions = [
        (info, prefix) for folders, prefix in layouts for info in Path(hf_cache).glob(f"{folders}/dataset_info.json")
    ]
    for info, prefix in sorted(versions, key=lambda version: version[0].stat().st_mtime, reverse=True):
        folder = info.parent
        found = sorted(folder.glob(f"{prefix}-{SPLIT}.arrow")) or sorted(folder.glob(f"{prefix}-{SPLIT}-*.arrow"))
        if found:
            return found
    return []


def read_table(hf_cache: Path | str, hub_name: str) -> pa.Table:
    files = arrow_files(hf_cache, hub_name)
    if not files:
        raise FileNotFoundError(f"{hf_cache}: no cached test split of {hub_name}")
    tables = []
    for path in files:
        try:
            tables.append(pa.ipc.open_stream(pa.memory_map(str(path))).read_all())
        except pa.ArrowInvalid as error:
            raise ValueError(f"{path}: not an arrow file datasets wrote ({error})") from error
    return pa.concat_tables(tables)


def decode_image(value: dict):
    """One `datasets.Image` cell ({bytes, path}) as a PIL image."""
    import PIL.Image
    import PIL.ImageOps

    image = PIL.Image.open(io.BytesIO(value["bytes"]) if value["bytes"] is not None else value["path"])
    image.load()
    if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
        image = PIL.ImageOps.exif_transpose(image)
    return image
