"""Model fetching and loading, the embedder's decode-failure path, and approximate indices."""

import io
import json
from types import SimpleNamespace

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import webdataset as wds

from clipflow.embed.embedder import embed_chunk
from clipflow.errors import ClipflowError
from clipflow.index.builder import build_index
from clipflow.embed.model import encode_text_to_end_token, fetch_model, load_model
from conftest import jpeg

EMBED = {"model": "ViT-S-32", "pretrained": "none", "checkpoint": None, "cache_dir": "unused"}
OPTIONS = {"device": "auto", "precision": "auto", "batch_size": 3, "workers": 1}


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
    manifest = fetch_model({**EMBED, "checkpoint": str(path)}, tmp_path / "model.json")
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
    fetch_model({**EMBED, "checkpoint": str(copy)}, tmp_path / "model.json")
    copy.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ClipflowError, match="missing or changed; run the fetch_model rule again"):
        load_model(tmp_path / "model.json")


@pytest.mark.parametrize(
    "embed, message",
    [
        ({"model": "ViT-Q-99"}, "unknown open_clip architecture 'ViT-Q-99'"),
        ({"model": "ViT-B-32", "pretrained": "no_such_tag"}, "ViT-B-32 has no pretrained tag 'no_such_tag'"),
        ({"checkpoint": "/nonexistent/weights.pt"}, "embed.checkpoint: /nonexistent/weights.pt is not a file"),
    ],
)
def test_bad_model_settings_name_the_setting(tmp_path, embed, message):
    with pytest.raises(ClipflowError, match=message):
        fetch_model({**EMBED, **embed}, tmp_path / "model.json")


def test_random_weights_are_announced_and_identical_across_jobs(tmp_path, caplog):
    fetch_model(EMBED, tmp_path / "model.json")
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


def write_shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for key, image_bytes, caption in samples:
            sink.write(
                {
                    "__key__": key,
                    "jpg": image_bytes,
                    "txt": caption,
                    "json": json.dumps(
                        {"uid": f"u{key}", "url": f"http://x/{key}.jpg", "caption": caption, "key": key}
                    ),
                }
            )


def test_undecodable_images_are_dropped_and_counted_without_misalignment(tmp_path):
    fetch_model(EMBED, tmp_path / "model.json")
    samples = [
        ("000000000000", jpeg(seed=1), "first"),
        ("000000000001", b"\xff\xd8\xff garbage", "broken jpeg"),
        ("000000000002", jpeg(seed=2), "second"),
        ("000000000003", b"", "empty"),
        ("000000000004", jpeg(seed=3), "third"),
    ]
    write_shard(tmp_path / "00000000.tar", samples)
    write_shard(tmp_path / "00000001.tar", [])  # a shard whose downloads all failed
    outputs = SimpleNamespace(**{k: tmp_path / f"out.{k}" for k in ("image", "text", "metadata", "info")})
    info = embed_chunk(
        [tmp_path / "00000000.tar", tmp_path / "00000001.tar"], tmp_path / "model.json", OPTIONS, [], outputs
    )
    assert (info["embedded"], info["decode_failed"]) == (3, 2)
    assert info["per_shard"] == {"00000000": 3, "00000001": 0}
    assert sorted(f["caption"] for f in info["decode_failures"]) == ["broken jpeg", "empty"]
    metadata = pd.read_parquet(outputs.metadata)
    assert metadata["caption"].tolist() == ["first", "second", "third"]
    model = load_model(tmp_path / "model.json")
    expected = model.encode_texts(model.tokenizer(["first", "second", "third"])).numpy()
    assert np.allclose(np.load(outputs.text).astype(np.float32), expected, atol=2e-3)


def random_unit_vectors(count, dim, seed):
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


INDEX_OPTIONS = {
    "kind": "auto",
    "exact_below": 1000,
    "metric": "ip",
    "max_index_memory_usage": "1G",
    "current_memory_available": "4G",
    "max_index_query_time_ms": 10,
    "memory_mappable": True,
}


def test_approximate_index_recall_against_brute_force(tmp_path):
    """Above exact_below, autofaiss builds an approximate index; recall@10 must stay above 0.8."""
    parts = [random_unit_vectors(3_000, 64, seed) for seed in range(3)]
    paths = []
    for i, part in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", part.astype(np.float16))
        paths.append(tmp_path / f"{i}.npy")
    infos = build_index(paths, tmp_path / "image.index", tmp_path / "image.infos.json", INDEX_OPTIONS)
    assert infos["exact"] is False and infos["size"] == 9_000 and infos["index_key"] != "Flat"

    import faiss

    index = faiss.read_index(str(tmp_path / "image.index"))
    vectors = np.concatenate(parts)
    queries = vectors[::90] + 0.05 * random_unit_vectors(100, 64, 99)
    _, found = index.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall > 0.8, (infos["index_key"], recall)


def test_exact_index_below_threshold(tmp_path):
    np.save(tmp_path / "a.npy", random_unit_vectors(500, 32, 0).astype(np.float16))
    np.save(tmp_path / "b.npy", np.empty((0, 32), np.float16))  # an empty chunk adds nothing
    infos = build_index(
        [tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "t.index", tmp_path / "t.json", INDEX_OPTIONS
    )
    assert infos["index_key"] == "Flat" and infos["exact"] and infos["size"] == 500


def test_autofaiss_can_build_the_opq_indices_it_picks_at_scale():
    """autofaiss picks OPQ...,IVF...,PQ... for large collections; the pinned faiss must accept its calls."""
    from autofaiss.indices.index_factory import index_factory
    import faiss

    index = index_factory(64, "OPQ8_64,IVF16,PQ8", faiss.METRIC_INNER_PRODUCT)
    vectors = random_unit_vectors(2_000, 64, 5)
    index.train(vectors)
    index.add(vectors)
    assert index.ntotal == 2_000
