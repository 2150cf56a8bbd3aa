import pytest
from pydantic import ValidationError

from llmdoctor.server.api.protocol_completions import CompletionRequest


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_completion_prompt_shapes_normalise_to_a_list(prompt, expected):
    assert CompletionRequest(prompt=prompt).prompt == expected


@pytest.mark.parametrize("prompt", [5, [], [1, "a"], [[1], []], [-1], [True]])
def test_completion_bad_prompt_is_refused_listing_the_shapes(prompt):
    with pytest.raises(ValidationError, match="a list of token-id lists"):
        CompletionRequest(prompt=prompt)


def test_completion_default_max_tokens_is_openais_16():
    assert CompletionRequest(prompt="x").requested_max_tokens(5, 2048) == 16


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_completion_non_positive_max_tokens_is_refused(max_tokens):
    with pytest.raises(ValidationError, match="max_tokens"):
        CompletionRequest(prompt="x", max_tokens=max_tokens)


def test_completion_echo_is_refused_with_a_reason():
    with pytest.raises(ValidationError, match="echo is not supported"):
        CompletionRequest(prompt="x", echo=True)


def test_completion_to_sampling_params_carries_every_field():
    body = CompletionRequest(
        prompt="x", temperature=0.7, top_p=0.9, top_k=40, seed=3, stop_token_ids=[5], ignore_eos=True, logprobs=2
    )
    params = body.to_sampling_params(32)
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed) == (32, 0.7, 0.9, 40, 3)
    assert (params.stop_token_ids, params.ignore_eos, params.logprobs) == ((5,), True, 2)


def test_completion_logprobs_above_20_is_refused():
    with pytest.raises(ValidationError, match="logprobs"):
        CompletionRequest(prompt="x", logprobs=21)
