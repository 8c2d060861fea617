"""Caption language: keep captions whose most likely language (fastText's lid.176) is one of `languages`, as
LAION-2B-en kept English and DataComp's LAION-2B baseline does."""

import numpy as np
import pandas as pd

from clipflow.curate.filters.base import Decision, Filter
from clipflow.curate.filters.basic import LANGUAGE_OPTIONS, caption_languages, language_model_files


class Language(Filter):
    kind = "language"
    description = "keep captions whose language (fastText lid.176) is one of languages"
    options_schema = LANGUAGE_OPTIONS

    def assets(self) -> list[str]:
        return language_model_files(self.options)

    def decide(self, rows, embeddings, resolved) -> Decision:
        found = caption_languages(rows["caption"], self.options["language_model"])
        keep = np.isin(found, self.options["languages"])
        return Decision(keep, pd.Series(np.where(keep, None, found), dtype=object))
