"""How a k-fold run scores a held-out prediction against the row's reference response (config `score`):

    exact_match   1 when prediction and reference are equal after normalise(), else 0
    first_token   1 when their first words are equal (classification: the answer's first word is the label)
    a `data synth` scorer (training/scorers.py: sentiment, length, length_long)
                  the scorer's value of the prediction (higher = better); no reference needed

Correctness metrics give each fold an accuracy (the share scored 1); a scorer gives each fold its mean score.
"""

from __future__ import annotations

import re

from llmdoctor.training.scorers import SCORERS, get_scorer
from llmdoctor.training.sft_data import SftRow

CORRECTNESS = ("exact_match", "first_token")


def known_metrics() -> tuple[str, ...]:
    return (*CORRECTNESS, *SCORERS)


def normalise(text: str) -> str:
    """Lower case, inner whitespace collapsed, punctuation and quotes trimmed at both ends."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,;:!?\"'`()[]{}")


def is_correct(metric: str, prediction: str, reference: str) -> bool:
    ours, theirs = normalise(prediction), normalise(reference)
    if metric == "first_token":  # classification: the first word decides
        return bool(ours) and ours.split(" ")[0].strip(".,;:!?\"'") == theirs.split(" ")[0]
    return ours == theirs


class PredictionScorer:
    """`metric` as a function of (row, prediction) -> (correct or None, score)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.correctness = metric in CORRECTNESS
        self._scorer = None if self.correctness else get_scorer(metric)  # built once (VADER loads a lexicon)

    def __call__(self, row: SftRow, prediction: str) -> tuple[bool | None, float]:
        if self.correctness:
            correct = is_correct(self.metric, prediction, reference_text(row))
            return correct, float(correct)
        return None, float(self._scorer(prompt_text(row), prediction))


def reference_text(row: SftRow) -> str:
    return row.response if isinstance(row.response, str) else row.response[-1].content


def prompt_text(row: SftRow) -> str:
    """The prompt a scorer sees: the text, or the last turn of a chat prompt."""
    return row.prompt if isinstance(row.prompt, str) else (row.prompt[-1].content if row.prompt else "")
