"""The demo's own CLIP model: a small open_clip architecture (`clipflow-demo`, 64-pixel images) trained by
`python -m clipflow.embed.demo_model.train` on shapes rendered like the demo's (other seeds than the demo's rows),
so that the demo's searches mean something with no model hub reachable. `embed.model: clipflow-demo` with
`embed.pretrained: shapes` loads these weights."""

from pathlib import Path

import open_clip

FOLDER = Path(__file__).parent
ARCH, TAG = "clipflow-demo", "shapes"
WEIGHTS = FOLDER / "shapes.pt"

open_clip.add_model_config(FOLDER / f"{ARCH}.json")
