"""Text-based: keep captions that name a vocabulary term as whole words (multi-word terms as phrases)."""

import functools
import re

import pandas as pd

from clipflow.curate.filters.base import Decision, Filter
from clipflow.errors import ClipflowError

WORD = re.compile(r"\w+")


def _words(text: str) -> tuple[str, ...]:
    return tuple(WORD.findall(text.lower()))


def text_based_filter(captions: pd.Series, vocabulary: list[str]):
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


class TextBased(Filter):
    kind = "text_based"
    description = "keep captions naming a vocabulary term as whole words"
    required = ("vocabulary",)
    options_schema = {
        "vocabulary": {
            "description": "terms, or a file with a term per line (commas separate synonyms)",
            "oneOf": [
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                {"type": "string", "minLength": 1},
            ],
        }
    }

    def assets(self) -> list[str]:
        vocabulary = self.options["vocabulary"]
        return [vocabulary] if isinstance(vocabulary, str) else []

    @functools.cached_property
    def vocabulary(self) -> list[str]:
        return read_vocabulary(self.options["vocabulary"])

    def decide(self, rows, embeddings, resolved) -> Decision:
        keep, matched = text_based_filter(rows["caption"], self.vocabulary)
        return Decision(keep, matched)
