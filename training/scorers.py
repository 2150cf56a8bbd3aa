"""Scorers that rank sampled responses for `llmdoctor data synth`: higher score = preferred.

A scorer is any `score(prompt, response) -> float`; the registry maps a name to a factory, so a
scorer with set-up cost (the VADER lexicon) is built once, and only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Scorer(Protocol):
    def __call__(self, prompt: str, response: str) -> float: ...


class UnknownScorerError(ValueError):
    """The scorer name is not registered; the message lists the known ones."""


def word_count(text: str) -> int:
    return len(text.split())


def length_score(prompt: str, response: str) -> float:
    """Conciseness: minus the response's length in words, so shorter responses score higher."""
    return -float(word_count(response))


def long_length_score(prompt: str, response: str) -> float:
    """Verbosity: the response's length in words, so longer responses score higher."""
    return float(word_count(response))


def sentiment_scorer() -> Scorer:
    """VADER's compound score in [-1, 1] (Hutto & Gilbert 2014): more positive scores higher.

    The `vaderSentiment` package ships its lexicon, so this works offline.
    """
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def score(prompt: str, response: str) -> float:
        return float(analyzer.polarity_scores(response)["compound"])

    return score


SCORERS: dict[str, Callable[[], Scorer]] = {
    "sentiment": sentiment_scorer,
    "length": lambda: length_score,
    "length_long": lambda: long_length_score,
}


def get_scorer(name: str) -> Scorer:
    """Build the scorer registered under `name`; an unknown name raises UnknownScorerError."""
    if name not in SCORERS:
        raise UnknownScorerError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")
    return SCORERS[name]()
