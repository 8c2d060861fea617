"""Model fetching and loading, and the embedder: per-shard files, decode failures, alignment."""

import io
import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from clipflow.embed import shard_outputs
from clipflow.embed.embedder import embed_chunk
from clipflow.embed.model import encode_text_to_end_token, fetch_model, load_model
from clipflow.embed.summary import SimilarityHistogram, pair_similarities, summarize_embeddings
from clipflow.errors import ClipflowError
from conftest import jpeg, write_shard

EMBED = {"arch": "ViT-S-32", "tag": "none", "checkpoint": None, "cache_dir": "unused"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written the way open_clip saves weights, from a seeded random model."""
    torch.manual_seed(123)
    model = open_clip.create_model("ViT-S-32")
    path = tmp_path_factory.mktemp("weights") / "vit-s-32.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_checkpoint_is_loaded_and_recorded_with_its_hash(tmp_path, checkpoint):
    path, reference = checkpoint
    manifest = fetch_model(**{**EMBED, "checkpoint": str(path)}, manifest_path=tmp_path / "model.json")
    assert manifest["checkpoint"] == str(path.resolve()) and len(manifest["sha256"]) == 64
    assert manifest["random_weights"] is False
    loaded = load_model(tmp_path / "model.json", "cpu", "fp32")
    tokens = loaded.tokenizer(["a red circle"])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference.eval().encode_text(tokens), dim=-1)
    assert torch.allclose(loaded.encode_texts(tokens), expected, atol=1e-5)
    assert loaded.provenance["sha256"] == manifest["sha256"] and loaded.provenance["device"] == "cpu"


def test_changed_checkpoint_is_refused(tmp_path, checkpoint):
    path, _ = checkpoint
    copy = tmp_path / "weights.pt"
    copy.write_bytes(path.read_bytes())
    fetch_model(**{**EMBED, "checkpoint": str(copy)}, manifest_path=tmp_path / "model.json")
    copy.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ClipflowError, match="missing or changed; run the fetch_model rule again"):
        load_model(tmp_path / "model.json")


@pytest.mark.parametrize(
    "embed, message",
    [
        ({"arch": "ViT-Q-99"}, "unknown open_clip architecture 'ViT-Q-99'"),
        ({"arch": "ViT-B-32", "tag": "no_such_tag"}, "ViT-B-32 has no pretrained tag 'no_such_tag'"),
        ({"checkpoint": "/nonexistent/weights.pt"}, "embed.checkpoint: /nonexistent/weights.pt is not a file"),
    ],
)
def test_bad_model_settings_name_the_setting(tmp_path, embed, message):
    with pytest.raises(ClipflowError, match=message):
        fetch_model(**{**EMBED, **embed}, manifest_path=tmp_path / "model.json")


def test_random_weights_are_announced_and_identical_across_jobs(tmp_path, caplog):
    fetch_model(**EMBED, manifest_path=tmp_path / "model.json")
    first = load_model(tmp_path / "model.json", "cpu")
    second = load_model(tmp_path / "model.json", "cpu")
    assert "RANDOM WEIGHTS" in caplog.text
    tokens = first.tokenizer(["same model in every job"])
    assert torch.equal(first.encode_texts(tokens), second.encode_texts(tokens))
    assert first.provenance["random_weights"] is True


@pytest.mark.parametrize("name", ["ViT-S-32", "ViT-B-32", "coca_ViT-B-32"])
def test_text_tower_cut_at_the_end_token_matches_the_full_context(name):
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    tokens = open_clip.get_tokenizer(name)(["a dog", "a much longer caption about a red circle on green grass", ""])
    with torch.no_grad():
        full, cut = model.encode_text(tokens), encode_text_to_end_token(model, tokens)
    assert cut.shape == full.shape
    torch.testing.assert_close(cut, full, rtol=1e-4, atol=1e-5)


def test_undecodable_images_are_dropped_and_counted_without_misalignment(tmp_path):
    fetch_model(**EMBED, manifest_path=tmp_path / "model.json")
    samples = [
        ("000000000000", jpeg(seed=1), "first"),
        ("000000000001", b"\xff\xd8\xff garbage", "broken jpeg"),
        ("000000000002", jpeg(seed=2), "second"),
        ("000000000003", b"", "empty"),
        ("000000000004", jpeg(seed=3), "third"),
    ]
    write_shard(tmp_path / "00000000.tar", samples)
    write_shard(tmp_path / "00000001.tar", [])  # a shard whose downloads all failed
    tars = [tmp_path / "00000000.tar", tmp_path / "00000001.tar"]
    record = tmp_path / "embeddings/info/00000000.json"
    info = embed_chunk(
        tars, tmp_path / "model.json", tmp_path / "embeddings", record, [], "auto", batch_size=3, workers=1
    )
    assert (info["embedded"], info["decode_failed"]) == (3, 2)
    assert info["per_shard"] == {"00000000": 3, "00000001": 0}
    assert sorted(f["caption"] for f in info["decode_failures"]) == ["broken jpeg", "empty"]
    assert json.loads(record.read_text())["embedded"] == 3
    first, empty = (shard_outputs(tmp_path / "embeddings", shard) for shard in ("00000000", "00000001"))
    metadata = pd.read_parquet(first["metadata"])
    assert metadata["caption"].tolist() == ["first", "second", "third"]
    model = load_model(tmp_path / "model.json")
    expected = model.encode_texts(model.tokenizer(["first", "second", "third"])).numpy()
    assert np.allclose(np.load(first["text"]).astype(np.float32), expected, atol=2e-3)
    with torch.no_grad():  # images as open_clip's PIL preprocessing would give them: within fp16 rounding
        pil = torch.stack([model.preprocess(Image.open(io.BytesIO(jpeg(seed=seed)))) for seed in (1, 2, 3)])
    assert np.allclose(np.load(first["image"]).astype(np.float32), model.encode_images(pil).numpy(), atol=3e-3)
    # a shard whose samples all failed still gets its (empty) files, so every shard pairs with its tar
    assert np.load(empty["image"]).shape == (0, 384) and len(pd.read_parquet(empty["metadata"])) == 0


def test_similarity_summary_is_counted_a_shard_at_a_time(tmp_path):
    """The mean exact, quantiles within a bin of numpy's, from per-shard files of any size (one empty)."""
    rng = np.random.default_rng(0)
    paths = {"image": [], "text": []}
    for shard, rows in enumerate((500, 0, 1234, 77)):
        shared = rng.standard_normal((rows, 32))
        for kind in paths:
            vectors = shared + 1.5 * rng.standard_normal((rows, 32))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
            paths[kind].append(tmp_path / f"{shard}.{kind}.npy")
            np.save(paths[kind][-1], vectors.astype(np.float16))
    summary, histogram = summarize_embeddings([], paths["image"], paths["text"])
    exact = pair_similarities(paths["image"], paths["text"]).astype(np.float64)
    assert histogram.total == len(exact) == 1811
    assert summary["image_text_similarity"]["mean"] == pytest.approx(exact.mean(), abs=1e-9)
    for q, value in summary["image_text_similarity"]["quantiles"].items():
        assert abs(value - np.quantile(exact, q)) <= 2 / SimilarityHistogram.BINS
    counts, edges = histogram.binned()
    assert counts.sum() == len(exact) and (edges[0], edges[-1]) == (exact.min(), exact.max())
    assert SimilarityHistogram().summary() == {"mean": None, "quantiles": {}}
