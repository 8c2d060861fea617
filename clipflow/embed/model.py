"""The CLIP model: fetched once where the network is, then loaded offline from a local file by every job.

`fetch_model` writes a manifest (JSON) naming the weights file and its sha256; `load_model` reads only
that manifest and the file it names, so compute nodes without internet never reach a model hub.
"""

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

import clipflow
from clipflow.embed import demo_model  # registers the demo's architecture with open_clip
from clipflow.errors import ClipflowError
from clipflow.files import sha256_file, write_json

log = logging.getLogger(__name__)
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: pretrained is 'none', embeddings carry no meaning beyond this run's tests"


def fetch_model(arch: str, tag: str, checkpoint: str | None, cache_dir: str, manifest_path: Path | str) -> dict:
    """Make the weights of open_clip architecture `arch` local, from the pretrained `tag` (downloaded into
    `cache_dir`; needs the network) or a local `checkpoint`, and describe them in `manifest_path`."""
    if arch not in open_clip.list_models():
        raise ClipflowError(f"embed.model: unknown open_clip architecture {arch!r}")
    manifest = {"model": arch, "pretrained": tag, "checkpoint": None, "sha256": None, "random_weights": False}
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise ClipflowError(f"embed.checkpoint: {checkpoint} is not a file")
        manifest.update(pretrained=None, checkpoint=str(path.resolve()), sha256=sha256_file(path))
    elif (arch, tag) == (demo_model.ARCH, demo_model.TAG):  # weights that ship with clipflow
        manifest.update(checkpoint=str(demo_model.WEIGHTS.resolve()), sha256=sha256_file(demo_model.WEIGHTS))
    elif tag == "none":
        manifest.update(pretrained=None, random_weights=True)
        log.warning(RANDOM_WEIGHTS_WARNING)
    else:
        config = open_clip.get_pretrained_cfg(arch, tag)
        if not config:
            known = [t for a, t in open_clip.list_pretrained() if a == arch]
            raise ClipflowError(f"embed.pretrained: {arch} has no pretrained tag {tag!r}; known tags: {known}")
        try:
            path = Path(open_clip.download_pretrained(config, cache_dir=cache_dir))
        except Exception as error:  # the hub's own errors do not say which setting led here
            raise ClipflowError(f"embed.pretrained: could not fetch {arch}/{tag} weights: {error}") from error
        manifest.update(checkpoint=str(path.resolve()), sha256=sha256_file(path))
        manifest.update(image_mean=config.get("mean"), image_std=config.get("std"))
    Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
    write_json(manifest_path, manifest)
    return manifest


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipflowError("embed.device: cuda was asked for but torch sees no GPU")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return name


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    provenance: dict

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image(pixels.to(self.device, self.dtype, non_blocking=True))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        features = encode_text_to_end_token(self.model, tokens, self.device)
        return torch.nn.functional.normalize(features.float(), dim=-1)


def encode_text_to_end_token(model: torch.nn.Module, tokens: torch.Tensor, device=None) -> torch.Tensor:
    """open_clip's encode_text on `device`, run only up to the batch's last end-of-text token.

    CLIP's text attention is causal and its feature is the end token's, so the padding after it never
    changes the result. Captions and queries are far shorter than the 77-token context, so this skips
    most of the text tower's work. Other text towers run whole. The cut is found where the tokens are (the
    CPU, as the tokenizer makes them), so a GPU is never waited for.
    """
    device = device or tokens.device
    pool = getattr(model, "text_pool_type", None)
    if not isinstance(model, open_clip.CLIP) or model.attn_mask is None or pool not in ("argmax", "eos"):
        return model.encode_text(tokens.to(device, non_blocking=True))
    ends = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(ends.max()) + 1
    tokens, ends = tokens[:, :length].to(device, non_blocking=True), ends.to(device, non_blocking=True)
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)[torch.arange(x.shape[0], device=x.device), ends]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_model(manifest_path: Path | str, device: str = "auto", precision: str = "auto") -> LoadedModel:
    """Load the model a manifest describes, offline; checks the weights file against its recorded hash."""
    manifest = json.loads(Path(manifest_path).read_text())
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    kwargs = {}
    if manifest["checkpoint"]:
        path = Path(manifest["checkpoint"])
        if not path.is_file() or sha256_file(path) != manifest["sha256"]:
            raise ClipflowError(
                f"{manifest_path}: weights file {path} is missing or changed; run the fetch_model rule again"
            )
        if manifest.get("image_mean"):
            kwargs.update(image_mean=tuple(manifest["image_mean"]), image_std=tuple(manifest["image_std"]))
    else:
        log.warning(RANDOM_WEIGHTS_WARNING)
        torch.manual_seed(0)  # random, but the same random model in every job
    model, _, preprocess = open_clip.create_model_and_transforms(
        manifest["model"], pretrained=manifest["checkpoint"], device=torch_device, precision=precision, **kwargs
    )
    model.eval()
    provenance = {
        **manifest,
        "device": str(torch_device),
        "precision": precision,
        "versions": {
            "clipflow": clipflow.__version__,
            "open_clip": open_clip.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    return LoadedModel(
        model, preprocess, open_clip.get_tokenizer(manifest["model"]), torch_device, DTYPES[precision], provenance
    )
