"""Aesthetic score: keep images whose predicted rating (LAION's aesthetic predictor, about 1 to 10) is at least
`min_score`, as LAION-Aesthetics kept 4.5, 5, 6 and 6.5 and above."""

from clipflow.curate.filters.base import Decision, Filter


class Aesthetic(Filter):
    kind = "aesthetic"
    description = "keep images whose aesthetic_score (curate.scores.aesthetic_model) is >= min_score"
    options_schema = {"min_score": {"type": "number"}}
    required = ("min_score",)
    score_model = "aesthetic_model"

    def decide(self, rows, embeddings, resolved) -> Decision:
        return Decision(rows["aesthetic_score"].to_numpy() >= self.options["min_score"])
