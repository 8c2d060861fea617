"""Score heads read from weight files laid out as LAION's and clip-retrieval's, checked against torch running
the same architectures (the modules those projects define)."""

import numpy as np
import pytest
import torch
from torch import nn

from clipflow.embed.heads import AESTHETIC, SAFETY, load_head, unsafe_probability
from clipflow.errors import ClipflowError


def improved_aesthetic_predictor(width: int) -> nn.Module:
    """improved-aesthetic-predictor's MLP (linear layers and dropouts, no activation)."""
    module = nn.Module()
    module.layers = nn.Sequential(
        nn.Linear(width, 32), nn.Dropout(0.2), nn.Linear(32, 16), nn.Dropout(0.2), nn.Linear(16, 8),
        nn.Dropout(0.1), nn.Linear(8, 4), nn.Linear(4, 1),
    )  # fmt: skip
    return module


def nsfw_detector(width: int) -> nn.Module:
    """clip-retrieval's H14_NSFW_Detector layout, narrower."""
    module = nn.Module()
    layers = []
    for inputs, outputs in ((width, 32), (32, 64), (64, 32), (32, 16), (16, 8)):
        layers += [nn.Linear(inputs, outputs), nn.ReLU(), nn.Dropout(0.2)]
    module.layers = nn.Sequential(*layers, nn.Linear(8, 4), nn.Linear(4, 1))
    return module


@pytest.fixture
def embeddings():
    vectors = np.random.default_rng(0).standard_normal((50, 24)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "kind, make",
    [(AESTHETIC, lambda: nn.Linear(24, 1)), (AESTHETIC, lambda: improved_aesthetic_predictor(24)),
     (SAFETY, lambda: nsfw_detector(24))],
)  # fmt: skip
def test_heads_score_as_torch_does(tmp_path, embeddings, kind, make):
    torch.manual_seed(0)
    module = make().eval()
    torch.save(module.state_dict(), tmp_path / "head.pth")
    with torch.no_grad():
        forward = module.layers if hasattr(module, "layers") else module
        expected = forward(torch.from_numpy(embeddings))[:, 0].numpy()
    head = load_head(tmp_path / "head.pth", kind)
    assert np.allclose(head(embeddings), expected, atol=1e-5)
    assert np.allclose(head(embeddings * 3), expected, atol=1e-5)  # embeddings are normalized first
    if kind == SAFETY:
        assert np.allclose(unsafe_probability(head, embeddings), expected.clip(0, 1), atol=1e-5)


def test_bad_weight_files_are_named(tmp_path, embeddings):
    torch.save({"encoder.weight": torch.zeros(1, 24)}, tmp_path / "foreign.pth")
    with pytest.raises(ClipflowError, match="foreign.pth: unexpected entry 'encoder.weight'"):
        load_head(tmp_path / "foreign.pth", AESTHETIC)
    torch.save({"layers.0.weight": torch.zeros(8, 24), "layers.0.bias": torch.zeros(8),
                "layers.1.weight": torch.zeros(1, 9), "layers.1.bias": torch.zeros(1)}, tmp_path / "gap.pth")  # fmt: skip
    with pytest.raises(ClipflowError, match="do not chain"):
        load_head(tmp_path / "gap.pth", AESTHETIC)
    torch.save(nn.Linear(24, 3).state_dict(), tmp_path / "three.pth")
    with pytest.raises(ClipflowError, match="one score"):
        load_head(tmp_path / "three.pth", AESTHETIC)
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ClipflowError, match="text.pth: cannot read the aesthetic head"):
        load_head(tmp_path / "text.pth", AESTHETIC)
    torch.save(nn.Linear(768, 1).state_dict(), tmp_path / "l14.pth")
    with pytest.raises(ClipflowError, match="reads 768-d embeddings, these are 24-d"):
        load_head(tmp_path / "l14.pth", AESTHETIC)(embeddings)
