"""What the download step's image check costs per image, beside what img2dataset's resizer already spends.

Every downloaded body is checked before img2dataset's resizer (OpenCV) decodes, resizes and re-encodes it
(`clipflow.download.images`): a JPEG is decoded at 1/8 scale by libjpeg-turbo, stopping on its first warning.
This prints, per source size, milliseconds per image for the resizer alone (256 px, border, as the demo
config), the check alone on whole bodies and on bodies cut at 90%, and a full-scale Pillow decode, on one
thread:

    python bench/image_check.py --images 200
"""

import argparse
import io
import os
import time

import numpy as np
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from img2dataset.resizer import Resizer  # noqa: E402

from clipflow.download.images import ImageProblem, prepared_image  # noqa: E402

SIZES = [(512, 384), (1024, 768), (2048, 1536)]


def photo_like(size, seed) -> bytes:
    """Smooth gradients with fine noise, q90: compresses like a photograph (not like flat colour or noise)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)]
    image = (np.stack(channels, -1) * 90 + 128 + rng.normal(0, 12, (height, width, 3))).clip(0, 255)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def per_image_ms(function, bodies) -> float:
    started = time.perf_counter()
    for body in bodies:
        function(body)
    return (time.perf_counter() - started) * 1000 / len(bodies)


def rejected(body) -> None:
    try:
        prepared_image(body)
    except ImageProblem:
        return
    raise AssertionError("a cut JPEG passed the check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="images per size")
    args = parser.parse_args()
    resizer = Resizer(image_size=256, resize_mode="border", resize_only_if_bigger=False)

    def full_decode(body):
        Image.open(io.BytesIO(body)).load()

    print(f"{'source':>10} {'KB':>5} {'resizer ms':>11} {'check ms':>9} {'cut, check ms':>14} {'full decode ms':>15}")
    for size in SIZES:
        bodies = [photo_like(size, seed) for seed in range(args.images)]
        resize = per_image_ms(lambda body: resizer(io.BytesIO(body)), bodies)
        check = per_image_ms(prepared_image, bodies)
        cut = per_image_ms(rejected, [body[: len(body) * 9 // 10] for body in bodies])
        full = per_image_ms(full_decode, bodies)
        kilobytes = np.mean([len(b) for b in bodies]) / 1024
        print(f"{size[0]}x{size[1]:<5} {kilobytes:5.0f} {resize:11.2f} {check:9.3f} {cut:14.2f} {full:15.2f}")


if __name__ == "__main__":
    main()
