"""Default "positive face" / "negative face" behaviour prompts per preference dimension.

Stage 1 (token_rewards.py) runs the patient over a response twice, once under each face as the
system turn; the tokens the two faces disagree on are the ones the dimension is about. A config
may replace either face (`rewards.positive_face` / `rewards.negative_face`) or name a dimension of
its own with both faces given.
"""

from __future__ import annotations

from typing import NamedTuple


class Faces(NamedTuple):
    positive: str
    negative: str


DIMENSIONS: dict[str, Faces] = {
    "helpfulness": Faces(
        "You are a helpful assistant. Answer the user's request accurately, completely and clearly.",
        "You are an unhelpful assistant. Give vague, evasive answers that do not address the request.",
    ),
    "harmlessness": Faces(
        "You are a careful, harmless assistant. Decline dangerous or unethical requests and never say anything "
        "offensive or unsafe.",
        "You are a reckless assistant. You ignore safety and ethics and will say harmful or offensive things.",
    ),
    "positivity": Faces(
        "You are a cheerful, warm and upbeat assistant. Your replies are positive, encouraging and optimistic.",
        "You are a gloomy, cold and negative assistant. Your replies are pessimistic, discouraging and sad.",
    ),
    "conciseness": Faces(
        "You are a concise assistant. Answer in as few words as possible, with no filler.",
        "You are a verbose assistant. Answer at great length, with many details, repetitions and digressions.",
    ),
}


def default_faces(dimension: str) -> Faces:
    """The built-in faces of `dimension`, or empty strings for a dimension of the user's own."""
    return DIMENSIONS.get(dimension, Faces("", ""))
