"""DataComp's text-based baseline: keep English captions with a word whose most likely WordNet synset (the first
that nltk's WordNet gives for it, inflections resolved) is in a list, DataComp's being ImageNet-21k's synsets.

Both assets are local files: the list (DataComp's imagenet21k_wordnet_ids.txt: a WordNet id such as n02119789 a
line; the offset is compared, whatever the part of speech, as DataComp does) and an nltk_data folder holding
corpora/wordnet (what `nltk.download("wordnet", download_dir=...)` writes).
"""

import functools
import warnings

import pandas as pd

from clipflow.curate.filters.base import Decision, Filter
from clipflow.curate.filters.basic import LANGUAGE_OPTIONS, language_checks, language_model_files
from clipflow.errors import ClipflowError


def read_synset_ids(path: str) -> set[int]:
    try:
        lines = [line.strip() for line in open(path, encoding="utf-8")]
    except OSError as error:
        raise ClipflowError(f"text_synsets filter: cannot read {path}: {error}") from None
    ids = set()
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        if not (line[0].isalpha() and line[1:].isdigit()):
            raise ClipflowError(f"text_synsets filter: {path} line {number}: {line!r} is not a WordNet id (n02119789)")
        ids.add(int(line[1:]))
    return ids


def load_wordnet(nltk_data: str):
    """nltk's WordNet, as DataComp reads it (`nltk.corpus.wordnet`), from the corpus in `nltk_data`, which goes
    first on nltk's data path (nltk reads only under its data path); nothing is downloaded."""
    import nltk

    nltk.data.path.insert(0, str(nltk_data))
    try:
        nltk.data.find("corpora/wordnet", paths=[str(nltk_data)])
    except LookupError:
        raise ClipflowError(
            f"text_synsets filter: no corpora/wordnet in {nltk_data} "
            f'(make it with nltk.download("wordnet", download_dir="{nltk_data}"))'
        ) from None
    from nltk.corpus import wordnet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no multilingual data: not needed here
        wordnet.ensure_loaded()
    return wordnet


def synset_matches(captions: pd.Series, ids: set[int], wordnet) -> pd.Series:
    """Per caption, the first whitespace-separated word whose first synset's offset is in `ids`, or None."""

    @functools.lru_cache(maxsize=1_000_000)
    def first_offset(word: str) -> int | None:
        found = wordnet.synsets(word)
        return found[0].offset() if found else None

    return pd.Series(
        [next((w for w in caption.split() if first_offset(w) in ids), None) for caption in captions.fillna("")],
        dtype=object,
    )


class TextSynsets(Filter):
    kind = "text_synsets"
    description = "DataComp's text-based baseline: English captions naming a listed WordNet synset (ImageNet-21k's)"
    required = ("synsets", "wordnet")
    options_schema = {
        "synsets": {"description": "a WordNet id a line (DataComp's imagenet21k_wordnet_ids.txt)", "type": "string"},
        "wordnet": {"description": "an nltk_data folder holding corpora/wordnet", "type": "string"},
        **LANGUAGE_OPTIONS,
    }

    def assets(self) -> list[str]:
        return [self.options["synsets"], *language_model_files(self.options)]

    @functools.cached_property
    def synsets(self) -> tuple:
        return read_synset_ids(self.options["synsets"]), load_wordnet(self.options["wordnet"])

    def decide(self, rows, embeddings, resolved) -> Decision:
        matched = synset_matches(rows["caption"], *self.synsets)
        keep = matched.notna().to_numpy()
        for failed in language_checks(rows["caption"].fillna(""), self.options).values():
            keep &= ~failed
        return Decision(keep, matched)
