"""Query encoders: one CLIP model shared by every index that uses it, texts and images batched across requests."""

import asyncio
import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from clipflow.serve.batcher import MicroBatcher
from clipflow.serve.errors import RequestError

TEXT_CACHE_SIZE = 4096


class Encoder:
    """One model shared by every index that uses it; texts and images batched across requests."""

    def __init__(self, manifest: Path, max_batch: int, precision: str):
        from clipflow.embed.model import load_model

        self.model = load_model(manifest, precision=precision)
        self.dim = self.model.model.visual.output_dim
        self.texts = MicroBatcher(self._encode_texts, max_batch, "encode-text")
        self.images = MicroBatcher(self._encode_images, max_batch, "encode-image")
        self.text_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.model.encode_texts(self.model.tokenizer(texts)).cpu().numpy())

    def _encode_images(self, pixels: list) -> list[np.ndarray]:
        import torch

        return list(self.model.encode_images(torch.stack(pixels)).cpu().numpy())

    async def text(self, text: str) -> np.ndarray:
        if text in self.text_cache:
            self.text_cache.move_to_end(text)
            return self.text_cache[text]
        vector = await self.texts.submit(text)
        self.text_cache[text] = vector
        if len(self.text_cache) > TEXT_CACHE_SIZE:
            self.text_cache.popitem(last=False)
        return vector

    async def image(self, data: bytes, field: str) -> np.ndarray:
        pixels = await asyncio.to_thread(self._preprocess, data, field)
        return await self.images.submit(pixels)

    def _preprocess(self, data: bytes, field: str):
        try:
            with Image.open(io.BytesIO(data)) as image:
                return self.model.preprocess(image.convert("RGB"))
        except Exception as error:
            raise RequestError(field, f"not a decodable image ({type(error).__name__}: {error})") from error
