"""JPEG bytes to model input, in batches, on any device: open_clip's preprocessing done on tensors.

On a GPU the whole batch is decoded by nvjpeg and resized there; on the CPU the same code runs with
torchvision's libjpeg-turbo decoder inside the DataLoader workers. Images the batched decoder rejects (PNG,
CMYK, some progressive JPEGs, damaged files) are decoded one by one by PIL, which DataComp and open_clip use,
then take the same tensor path; an image no decoder reads is reported, never dropped silently.
"""

import io
import warnings

import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

# torchvision 0.29 announces that torchcodec will take over its decoders; the pinned version has them.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


class ImagePipeline:
    """Mirrors an open_clip preprocess (Resize, CenterCrop, RGB, ToTensor, Normalize) on uint8 tensors."""

    def __init__(self, preprocess: T.Compose, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.steps = []
        for step in preprocess.transforms:
            if isinstance(step, T.Resize):
                size = [step.size] if isinstance(step.size, int) else list(step.size)
                self.steps.append(lambda x, s=step, size=size: F.resize(x, size, s.interpolation, s.max_size, True))
            elif isinstance(step, T.CenterCrop):
                self.steps.append(lambda x, size=list(step.size): F.center_crop(x, size))
            elif isinstance(step, T.Normalize):
                self.mean = torch.tensor(step.mean, device=self.device).view(1, 3, 1, 1)
                self.std = torch.tensor(step.std, device=self.device).view(1, 3, 1, 1)
            elif type(step).__name__ not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "function"):
                raise ValueError(f"preprocessing step {step!r} has no tensor version here")

    def __call__(self, encoded: list[bytes]) -> tuple[torch.Tensor, dict[int, str]]:
        """Model input (float32, N x 3 x H x W, on the device) for the images that decode, in order, and the
        error of each position that does not."""
        images, errors = self.decode(encoded)
        return self.finish(images), errors

    def finish(self, images: list[torch.Tensor | None]) -> torch.Tensor:
        """Model input from decoded uint8 images (None, an image that did not decode, is left out)."""
        good = [image for image in images if image is not None]
        if not good:
            return torch.empty(0, 3, 1, 1, device=self.device)
        pixels = torch.cat([self._resize(torch.stack(group)) for group in _same_size_runs(good)])
        return (pixels.float().div_(255) - self.mean) / self.std

    def decode(self, encoded: list[bytes]) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        """uint8 3 x H x W tensors on the device (None where no decoder reads the bytes), and the errors.

        Only whole JPEGs (start and end markers) go to the batched decoder; anything else, and anything it
        rejects, is decoded by PIL, which refuses truncated files."""
        images: list[torch.Tensor | None] = [None] * len(encoded)
        whole = [i for i, data in enumerate(encoded) if data[:2] == JPEG_START and data.rstrip(b"\0")[-2:] == JPEG_END]
        batch = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in whole]
        try:
            decoded = decode_jpeg(batch, mode=ImageReadMode.RGB, device=self.device) if batch else []
        except RuntimeError:  # one image the batched decoder rejects fails the call: decode one by one
            decoded = [self._decode_one(data) for data in batch]
        for position, image in zip(whole, decoded):
            images[position] = image if image is not None and image.shape[0] == 3 else None
        errors = {}
        for position in range(len(encoded)):
            if images[position] is None:
                image, error = _decode_with_pil(encoded[position])
                if error:
                    errors[position] = error
                else:
                    images[position] = image.to(self.device)
        return images, errors

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None

    def _resize(self, batch: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            batch = step(batch)
        return batch


def _same_size_runs(images: list[torch.Tensor]):
    """Consecutive images of one size go through resize together (img2dataset's shards are one size)."""
    start = 0
    for end in range(1, len(images) + 1):
        if end == len(images) or images[end].shape != images[start].shape:
            yield images[start:end]
            start = end


def _decode_with_pil(data: bytes) -> tuple[torch.Tensor | None, str | None]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
        return F.pil_to_tensor(rgb), None
    except Exception as error:  # whatever PIL cannot read is a decode failure of this sample alone
        return None, f"{type(error).__name__}: {error}"
