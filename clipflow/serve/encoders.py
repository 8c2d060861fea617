"""Query encoders: one CLIP model shared by every index that uses it, texts and images batched across requests.

Query images are decoded by a fixed number of threads and refused above a pixel limit, so the memory they take
does not grow with the core count or with what clients send; large images take a lane of their own, so that
one client's large images never hold the others' queries; texts are cut before tokenizing.
"""

import asyncio
import io
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from clipflow.download.images import check_jpeg
from clipflow.serve.batcher import MicroBatcher
from clipflow.serve.errors import RequestError
from clipflow.serve.limits import Limits

TEXT_CACHE_SIZE = 4096


class ImageDecoder:
    """Decodes and preprocesses query images within the pixel limit: `limits.decode_workers` at a time up to
    `limits.large_image_pixels`, and one larger image at a time beside them. An image that waits for its lane
    longer than `limits.decode_wait_seconds` is answered 503, so a queue of large images stays short."""

    def __init__(self, limits: Limits):
        self.max_pixels, self.large_pixels = limits.max_image_pixels, limits.large_image_pixels
        self.max_wait = limits.decode_wait_seconds
        self.lanes = {
            "normal": ThreadPoolExecutor(max_workers=limits.decode_workers, thread_name_prefix="decode-image"),
            "large": ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-large-image"),
        }

    async def pixels(self, data: bytes, field: str, preprocess):
        image = self._open(data, field)  # the header only: cheap, and it says which lane
        width, height = image.size
        lane = self.lanes["large" if width * height > self.large_pixels else "normal"]
        decode = partial(self._pixels, image, data, field, preprocess, time.monotonic())
        return await asyncio.get_running_loop().run_in_executor(lane, decode)

    def _open(self, data: bytes, field: str) -> Image.Image:
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:  # Pillow's own limit: over twice its 89 MP
            message = f"the image is over the limit of {self.max_pixels:,} pixels ({error})"
            raise RequestError(field, message, status=413) from None
        except Exception:
            raise RequestError(field, "not an image this server can read (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
        width, height = image.size
        if width * height > self.max_pixels:
            image.close()
            raise RequestError(
                field, f"the image is {width}x{height} pixels, over the limit of {self.max_pixels:,}", status=413
            )
        return image

    def _pixels(self, image: Image.Image, data: bytes, field: str, preprocess, queued: float):
        with image:
            if time.monotonic() - queued > self.max_wait:
                raise RequestError(
                    field, "the server is busy decoding other large images; retry in a few seconds", status=503
                )
            try:
                if image.format == "JPEG":
                    check_jpeg(data)  # libjpeg decodes a corrupt or cut scan into garbage with only a warning
                return preprocess(image.convert("RGB"))
            except Exception as error:  # ImageProblem, or whatever a decoder raises on damaged data
                raise RequestError(field, f"the image is damaged and cannot be decoded ({error})") from None


class Encoder:
    """One model shared by every index that uses it; texts and images batched across requests."""

    def __init__(self, manifest: Path, limits: Limits, decoder: ImageDecoder):
        from clipflow.embed.model import load_model

        self.model = load_model(manifest, precision=limits.precision)
        self.dim = self.model.model.visual.output_dim
        self.decoder, self.max_text_chars = decoder, limits.max_text_chars
        self.texts = MicroBatcher(self._encode_texts, limits.max_batch, "encode-text")
        self.images = MicroBatcher(self._encode_images, limits.max_batch, "encode-image")
        self.text_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.model.encode_texts(self.model.tokenizer(texts)).cpu().numpy())

    def _encode_images(self, pixels: list) -> list[np.ndarray]:
        import torch

        return list(self.model.encode_images(torch.stack(pixels)).cpu().numpy())

    async def text(self, text: str) -> np.ndarray:
        text = text[: self.max_text_chars]  # tokenizing what the model cannot read would cost seconds
        if text in self.text_cache:
            self.text_cache.move_to_end(text)
            return self.text_cache[text]
        vector = await self.texts.submit(text)
        self.text_cache[text] = vector
        if len(self.text_cache) > TEXT_CACHE_SIZE:
            self.text_cache.popitem(last=False)
        return vector

    async def image(self, data: bytes, field: str) -> np.ndarray:
        return await self.images.submit(await self.decoder.pixels(data, field, self.model.preprocess))
