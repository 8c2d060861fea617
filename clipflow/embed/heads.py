"""Score heads over CLIP image embeddings, as LAION-5B's metadata and clip-retrieval have them, loaded from local
weight files (no model hub is needed):

- the aesthetic predictor (LAION-AI/aesthetic-predictor's linear head `sa_0_4_vit_l_14_linear.pth`, or
  improved-aesthetic-predictor's MLP `sac+logos+ava1-l14-linearMSE.pth`): linear layers with no activation
  between them (their dropouts do nothing at inference), giving a rating of about 1 to 10;
- the NSFW detector in clip-retrieval's torch layout (LAION-AI/CLIP-based-NSFW-Detector's `h14_nsfw.pth`):
  linear layers with a ReLU after each but the last two, giving the probability that an image is unsafe
  (clip-retrieval drops results above 0.5).

Both read L2-normalized image embeddings of the model the head was trained for; a head whose input width is
not the embeddings' is refused by name.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipflow.errors import ClipflowError

AESTHETIC, SAFETY = "aesthetic", "safety"
UNSAFE_ABOVE = 0.5  # clip-retrieval's cut for its safety model
RATINGS = range(10)  # clip-retrieval's aesthetic_score values: one embedding per rating, rating0.npy .. rating9.npy


@dataclass
class Head:
    path: Path
    layers: list[tuple[np.ndarray, np.ndarray]]  # (weight out x in, bias) in order
    relu_after: int  # a ReLU follows each of the first `relu_after` layers

    @property
    def input_width(self) -> int:
        return self.layers[0][0].shape[1]

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """One score per row of `embeddings` (normalized first)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_width:
            raise ClipflowError(
                f"{self.path}: the head reads {self.input_width}-d embeddings, these are {x.shape[-1]}-d; "
                "give the head trained for this embedding model"
            )
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        for position, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if position < self.relu_after:
                np.maximum(x, 0, out=x)
        return x[:, 0]


def load_head(path: Path | str, kind: str) -> Head:
    """The aesthetic predictor or the NSFW detector (see the module) from a torch state dict."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a missing or foreign file
        raise ClipflowError(f"{path}: cannot read the {kind} head's weights: {error}") from None
    if not isinstance(state, dict):
        raise ClipflowError(f"{path}: expected a state dict of linear layers, got {type(state).__name__}")
    layers = _linear_layers(path, state)
    for (weight, _), (following, _) in zip(layers, layers[1:]):
        if weight.shape[0] != following.shape[1]:
            raise ClipflowError(f"{path}: layer widths do not chain ({weight.shape} then {following.shape})")
    if layers[-1][0].shape[0] != 1:
        raise ClipflowError(f"{path}: the last layer must give one score, it gives {layers[-1][0].shape[0]}")
    return Head(path, layers, relu_after=0 if kind == AESTHETIC else max(0, len(layers) - 2))


def _linear_layers(path: Path, state: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) pairs from `weight`/`bias` (one nn.Linear) or `layers.N.weight`/`layers.N.bias`
    (an nn.Sequential, N ascending)."""
    found: dict[int, dict[str, np.ndarray]] = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"(?:layers\.(\d+)\.)?(weight|bias)", name)
        if match is None:
            raise ClipflowError(f"{path}: unexpected entry {name!r}; expected weight/bias of linear layers")
        position = int(match.group(1) or 0)
        found.setdefault(position, {})[match.group(2)] = tensor.detach().float().numpy()
    if not found:
        raise ClipflowError(f"{path}: no layers")
    layers = []
    for position in sorted(found):
        parts = found[position]
        if set(parts) != {"weight", "bias"} or parts["weight"].ndim != 2:
            raise ClipflowError(f"{path}: layer {position} is not a linear layer (weight and bias)")
        layers.append((parts["weight"], parts["bias"]))
    return layers


def unsafe_probability(head: Head, embeddings: np.ndarray) -> np.ndarray:
    """The detector's output read as a probability (it was trained towards 0 and 1)."""
    return head(embeddings).clip(0, 1)
