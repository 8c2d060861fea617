"""`clipflow query`: nearest neighbours of a text or an image in an index folder."""

import io
import json
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from clipflow.errors import ClipflowError
from clipflow.index.folder import ClipIndex
from clipflow.index.vectors import RERANK_FACTOR

OUTPUT_COLUMNS = ("rank", "similarity", "id", "uid", "url", "caption")


def load_image(source: str, timeout: float = 10) -> Image.Image:
    """An image from a local path or an http(s) URL, with an error that says which and why."""
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=timeout) as response:
                data = response.read()
        else:
            data = Path(source).read_bytes()
        image = Image.open(io.BytesIO(data))
        return image.convert("RGB")
    except Exception as error:
        raise ClipflowError(f"{source}: cannot read an image: {error}") from error


def encode_query(index: ClipIndex, text: str | None, image: str | None) -> np.ndarray:
    """The embedding of a text, or of an image file or URL, by the model the index was built with."""
    if bool(text) == bool(image):
        raise ClipflowError("give either a text query or --image PATH_OR_URL")
    image_query = load_image(image) if image else None
    from clipflow.embed.model import load_model  # torch loads only once the inputs are known to be good

    model = load_model(index.model_manifest)
    if image_query:
        return model.encode_images(model.preprocess(image_query).unsqueeze(0)).cpu().numpy()
    return model.encode_texts(model.tokenizer([text])).cpu().numpy()


def run_query(
    index_folder, text: str | None, image: str | None, modality: str, k: int, rerank_factor: int = RERANK_FACTOR
) -> list[dict]:
    index = ClipIndex(index_folder, rerank_factor)
    index.index(modality)
    similarities, ids = index.search(encode_query(index, text, image), modality, k)
    found = ids[0] >= 0
    rows = index.rows(ids[0][found])
    return [
        {
            "rank": rank,
            "similarity": float(similarity),
            "id": int(row_id),
            **{c: row.get(c) for c in OUTPUT_COLUMNS[3:]},
        }
        for rank, (similarity, row_id, row) in enumerate(zip(similarities[0][found], ids[0][found], rows), start=1)
    ]


def format_results(results: list[dict], style: str) -> str:
    if style == "jsonl":
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in results)
    lines = [f"{'rank':>4}  {'similarity':>10}  {'id':>8}  caption / url"]
    for r in results:
        lines.append(f"{r['rank']:>4}  {r['similarity']:>10.4f}  {r['id']:>8}  {r['caption']}  <{r['url']}>")
    return "\n".join(lines)
