"""Caption language: keep captions whose most likely language is one of `languages`, by fastText's lid.176 or by
gcld3, the identifier LAION used for LAION-2B-en and that DataComp's LAION-2B baseline calls."""

import functools

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter
from clipflow.curate.filters.basic import LANGUAGE_OPTIONS, caption_languages, language_model_files


def gcld3_languages(captions: pd.Series) -> np.ndarray:
    """gcld3's language of each caption, asked as DataComp's LAION-2B baseline asks it: newlines as spaces, an
    identifier for 0 to 1,000 bytes."""
    identifier = _gcld3()
    return np.array([identifier.FindLanguage(text=str(c).replace("\n", " ")).language for c in captions.fillna("")])


@functools.cache
def _gcld3():
    import gcld3  # the cld3-py wheel's module

    return gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)


class Language(Filter):
    kind = "language"
    description = "keep captions whose language (fastText lid.176, or gcld3) is one of languages"
    options_schema = {
        **LANGUAGE_OPTIONS,
        "identifier": {
            "description": "fasttext (lid.176, or language_model) or gcld3 (DataComp's LAION-2B baseline)",
            "enum": ["fasttext", "gcld3"],
            "default": "fasttext",
        },
    }

    def assets(self) -> list[str]:
        return language_model_files(self.options) if self.options["identifier"] == "fasttext" else []

    def decide(self, rows, embeddings, resolved) -> Decision:
        if self.options["identifier"] == "gcld3":
            found = gcld3_languages(rows["caption"])
        else:
            found = caption_languages(rows["caption"], self.options["language_model"])
        keep = np.isin(found, self.options["languages"])
        return Decision(keep, pd.Series(np.where(keep, None, found), dtype=object))
