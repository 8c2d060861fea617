"""Query encoders: one CLIP model shared by every index that uses it, texts and images batched across requests.

Query images are decoded by a fixed number of threads and refused above a pixel limit, so the memory they take
does not grow with the core count or with what clients send; texts are cut before tokenizing.
"""

import asyncio
import io
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from clipflow.serve.batcher import MicroBatcher
from clipflow.serve.errors import RequestError
from clipflow.serve.limits import Limits

TEXT_CACHE_SIZE = 4096


class ImageDecoder:
    """Decodes and preprocesses query images, `limits.decode_workers` at a time, each within the pixel limit."""

    def __init__(self, limits: Limits):
        self.max_pixels = limits.max_image_pixels
        self.executor = ThreadPoolExecutor(max_workers=limits.decode_workers, thread_name_prefix="decode-image")

    async def pixels(self, data: bytes, field: str, preprocess):
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._pixels, data, field, preprocess)

    def _pixels(self, data: bytes, field: str, preprocess):
        try:
            image = Image.open(io.BytesIO(data))
        except Exception:
            raise RequestError(field, "not an image this server can read (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
        with image:
            width, height = image.size
            if width * height > self.max_pixels:
                raise RequestError(
                    field, f"the image is {width}x{height} pixels, over the limit of {self.max_pixels:,}", status=413
                )
            try:
                return preprocess(image.convert("RGB"))
            except Exception as error:
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
