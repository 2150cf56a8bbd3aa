import pytest

from llmdoctor.training.scorers import SCORERS, UnknownScorerError, get_scorer


def test_sentiment_prefers_a_positive_response():
    score = get_scorer("sentiment")
    happy = score("How was your day?", "It was wonderful, I loved every minute!")
    sad = score("How was your day?", "It was awful and I hated it.")
    assert happy > 0 > sad


def test_sentiment_of_a_neutral_or_empty_response_is_zero():
    score = get_scorer("sentiment")
    assert score("Hi", "") == 0.0
    assert score("Hi", "The table has four legs.") == 0.0


def test_sentiment_stays_within_minus_one_and_one():
    score = get_scorer("sentiment")
    assert -1.0 <= score("", "great great great great wonderful amazing superb " * 5) <= 1.0


def test_length_prefers_the_shorter_response():
    score = get_scorer("length")
    assert score("Q", "Yes.") == -1.0
    assert score("Q", "Yes, I think so.") == -4.0
    assert score("Q", "Yes.") > score("Q", "Yes, I think so.")


def test_length_long_prefers_the_longer_response():
    score = get_scorer("length_long")
    assert score("Q", "Yes, I think so.") == 4.0 > score("Q", "Yes.")


def test_scorers_ignore_the_prompt():
    for name in SCORERS:
        score = get_scorer(name)
        assert score("a prompt", "A nice reply.") == score("another prompt entirely", "A nice reply.")


def test_unknown_scorer_lists_the_known_ones():
    with pytest.raises(UnknownScorerError, match="known: sentiment, length, length_long"):
        get_scorer("toxicity")
