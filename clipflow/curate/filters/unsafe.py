"""Unsafe images: drop those whose probability of being unsafe (the CLIP NSFW detector) is above
`max_probability`; 0.5 is clip-retrieval's cut for its safety model and LAION's for its punsafe column."""

from clipflow.curate.filters.base import Decision, Filter
from clipflow.embed.heads import UNSAFE_ABOVE


class Unsafe(Filter):
    kind = "unsafe"
    description = "drop images whose punsafe (curate.scores.safety_model) is above max_probability"
    options_schema = {"max_probability": {"type": "number", "minimum": 0, "maximum": 1, "default": UNSAFE_ABOVE}}
    score_model = "safety_model"

    def decide(self, rows, embeddings, resolved) -> Decision:
        return Decision(rows["punsafe"].to_numpy() <= self.options["max_probability"])
