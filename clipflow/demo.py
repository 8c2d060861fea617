"""The built-in demo data set: rendered images with captions, served over HTTP on 127.0.0.1.

Row i is derived from a seeded generator, so the metadata (written while the workflow is parsed) and
the images (rendered by a rule) agree without sharing state. A few rows are broken on purpose
(missing files, truncated JPEGs, an empty url) and a few repeat earlier rows, so the accounting has every state.
"""

import functools
import http.server
import os
import random
import threading
import time
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SCENES = {  # phrase: (sky, ground)
    "on green grass": ((150, 200, 250), (70, 150, 60)),
    "on a sandy beach": ((120, 190, 240), (230, 210, 150)),
    "in a snowy field": ((200, 210, 220), (245, 245, 250)),
    "under a night sky": ((10, 15, 50), (40, 40, 60)),
    "in the desert at sunset": ((250, 150, 90), (200, 140, 80)),
    "on a grey city street": ((170, 175, 180), (90, 90, 95)),
}
SHAPES = ("circle", "square", "triangle", "star", "ring")
MISSING_EVERY, TRUNCATED_EVERY, REPEAT_EVERY = 29, 47, 31


def _spec(index: int) -> dict:
    rng = random.Random(index)
    return {
        "shape": rng.choice(SHAPES),
        "color": rng.choice(sorted(COLORS)),
        "scene": rng.choice(sorted(SCENES)),
        "width": rng.randrange(240, 480, 8),
        "height": rng.randrange(240, 480, 8),
        "rng": rng,
    }


def caption(index: int) -> str:
    spec = _spec(index)
    return f"a {spec['color']} {spec['shape']} {spec['scene']}"


def _file_name(index: int) -> str:
    if index % TRUNCATED_EVERY == TRUNCATED_EVERY - 1:
        return f"{index:05d}-truncated.jpg"
    return f"{index:05d}.jpg"


def metadata(images: int, port: int) -> pd.DataFrame:
    rows = []
    for index in range(images):
        folder = "missing" if index % MISSING_EVERY == MISSING_EVERY - 1 else "images"
        rows.append({"url": f"http://127.0.0.1:{port}/{folder}/{_file_name(index)}", "caption": caption(index)})
        if index % REPEAT_EVERY == REPEAT_EVERY - 1:
            rows.append(dict(rows[len(rows) // 2]))  # an exact repeat of an earlier row
    rows.append({"url": "", "caption": "a row whose url was lost"})
    return pd.DataFrame(rows)


def metadata_is_current(path: Path | str, images: int, port: int) -> bool:
    path = Path(path)
    return path.exists() and path.read_text() == metadata(images, port).to_csv(index=False)


def write_metadata(path: Path | str, images: int, port: int) -> None:
    """Write the demo CSV, leaving the file (and its fingerprint in the plan) alone when unchanged."""
    path = Path(path)
    if metadata_is_current(path, images, port):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(metadata(images, port).to_csv(index=False))


def render(index: int) -> Image.Image:
    spec = _spec(index)
    rng, width, height = spec["rng"], spec["width"], spec["height"]
    sky, ground = SCENES[spec["scene"]]
    image = Image.new("RGB", (width, height), sky)
    draw = ImageDraw.Draw(image)
    horizon = int(height * rng.uniform(0.55, 0.7))
    draw.rectangle([0, horizon, width, height], fill=ground)
    size = int(min(width, height) * rng.uniform(0.3, 0.45))
    cx, cy = rng.randint(size, width - size), rng.randint(size, height - size)
    color = COLORS[spec["color"]]
    box = [cx - size, cy - size, cx + size, cy + size]
    if spec["shape"] == "circle":
        draw.ellipse(box, fill=color)
    elif spec["shape"] == "ring":
        draw.ellipse(box, outline=color, width=max(4, size // 4))
    elif spec["shape"] == "square":
        draw.rectangle(box, fill=color)
    elif spec["shape"] == "triangle":
        draw.polygon([(cx, cy - size), (cx - size, cy + size), (cx + size, cy + size)], fill=color)
    else:
        draw.regular_polygon((cx, cy, size), n_sides=5, rotation=rng.uniform(0, 72), fill=color)
        draw.regular_polygon((cx, cy, size // 2), n_sides=5, rotation=36, fill=color)
    return image


def render_images(folder: Path | str, images: int) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        path = folder / _file_name(index)
        render(index).save(path, quality=90)
        if path.name.endswith("-truncated.jpg"):
            # Cut inside the headers: OpenCV decodes a JPEG cut mid-scan (grey fill) as a success.
            path.write_bytes(path.read_bytes()[:300])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class names it so
        pass


def serve(folder: Path | str, port: int, parent_pid: int | None = None) -> None:
    """Serve `folder` on 127.0.0.1:port until killed, or until `parent_pid` exits (no orphan servers)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    if parent_pid:

        def stop_when_orphaned():
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            server.shutdown()

        threading.Thread(target=stop_when_orphaned, daemon=True).start()
    server.serve_forever()
