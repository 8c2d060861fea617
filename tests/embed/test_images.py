"""The tensor image pipeline (the embedding step's preprocessing on CPU and GPU) against open_clip's PIL one."""

import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipflow.embed.images import ImagePipeline

ONE_LEVEL = 1 / 255 / 0.26130258  # one 8-bit step, in normalized units (the smallest std)


@pytest.fixture(scope="module")
def preprocess():
    return open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)[2]


def encoded(width, height, mode="RGB", fmt="JPEG", seed=0, **options) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((width, height), Image.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95, **options) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


KINDS = {
    "256x256": encoded(256, 256),
    "640x480": encoded(640, 480, seed=1),
    "100x300": encoded(100, 300, seed=2),
    "224x224": encoded(224, 224, seed=3),
    "progressive": encoded(256, 256, seed=4, progressive=True),
    "greyscale": encoded(256, 256, "L", seed=5),
    "cmyk": encoded(256, 256, "CMYK", seed=6),
    "png": encoded(300, 200, fmt="PNG", seed=7),
}


def test_model_input_matches_open_clip_within_a_rounding_step(preprocess):
    pixels, errors = ImagePipeline(preprocess, "cpu")(list(KINDS.values()))
    assert errors == {} and pixels.shape == (len(KINDS), 3, 224, 224)
    for (kind, data), made in zip(KINDS.items(), pixels):
        expected = preprocess(Image.open(io.BytesIO(data)))
        deviation = (made - expected).abs()
        # resize, crop and normalization agree; decoders and resamplers differ by at most two 8-bit steps
        assert deviation.max() <= 2 * ONE_LEVEL + 1e-6, (kind, deviation.max().item())
        assert deviation.mean() < 0.05 * ONE_LEVEL, (kind, deviation.mean().item())


def test_images_no_decoder_reads_are_reported_at_their_place(preprocess):
    good = KINDS["256x256"]
    batch = [good, good[: len(good) // 2], KINDS["png"], b"\xff\xd8 not a jpeg \xff\xd9", b"", KINDS["640x480"]]
    pixels, errors = ImagePipeline(preprocess, "cpu")(batch)
    assert sorted(errors) == [1, 3, 4]
    assert "truncated" in errors[1]
    assert len(pixels) == 3  # the good ones, in order, none shifted by the failures between them
    alone, _ = ImagePipeline(preprocess, "cpu")([good, KINDS["png"], KINDS["640x480"]])
    torch.testing.assert_close(pixels, alone)


def test_a_step_without_a_tensor_version_is_refused():
    import torchvision.transforms as T

    with pytest.raises(ValueError, match="no tensor version"):
        ImagePipeline(T.Compose([T.RandomHorizontalFlip()]))
