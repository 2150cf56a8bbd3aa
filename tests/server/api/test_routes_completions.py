"""POST /v1/completions on the live server, through the official openai client and raw SSE."""

import json

import pytest

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def plain(openai_client):
    """The greedy 12-token continuation of PROMPT: the reference the stop tests cut."""
    return openai_client.completions.create(model=None, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text


def sse_events(live_server, body):
    with live_server.client() as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_completion_greedy_returns_openai_shape(openai_client):
    result = openai_client.completions.create(model="SmolLM2-135M-Instruct", prompt=PROMPT, max_tokens=5,
                                              temperature=0)
    assert result.object == "text_completion" and result.id.startswith("cmpl-")
    assert result.choices[0].text and result.choices[0].finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (5, 5, 10)


def test_completion_default_max_tokens_is_16(openai_client):
    result = openai_client.completions.create(model=None, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    assert result.usage.completion_tokens == 16


def test_completion_stop_string_cuts_output_before_it(openai_client, plain):
    stop = plain.strip()[1:4]  # a few characters from inside the text, likely across token boundaries
    result = openai_client.completions.create(model=None, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert result.choices[0].text == plain[: plain.index(stop)]
    assert result.choices[0].finish_reason == "stop"


def test_completion_stream_stop_string_never_reaches_the_client(live_server, plain):
    stop = plain.strip()[1:4]
    events = sse_events(live_server, {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True,
                                      "stop": stop})
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain[: plain.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_completion_stream_ends_with_usage_then_done(live_server):
    events = sse_events(live_server, {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True,
                                      "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4


def test_completion_stream_continuous_usage_counts_each_choice_as_vllm_does(live_server):
    """vLLM's stream_options.continuous_usage_stats: every chunk carries its choice's usage so far."""
    events = sse_events(live_server, {"prompt": PROMPT, "max_tokens": 4, "temperature": 1, "seed": 3, "n": 2,
                                      "ignore_eos": True, "stream": True,
                                      "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    chunks = [json.loads(e) for e in events[:-2]]
    prompt_tokens = chunks[0]["usage"]["prompt_tokens"]
    seen = {0: 0, 1: 0}
    for chunk in chunks:
        index, usage = chunk["choices"][0]["index"], chunk["usage"]
        assert usage["prompt_tokens"] == prompt_tokens and usage["completion_tokens"] >= seen[index]
        assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
        seen[index] = usage["completion_tokens"]
    assert seen == {0: 4, 1: 4}
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 8  # the final chunk sums the choices


def test_completion_stream_continuous_usage_needs_include_usage(live_server):
    events = sse_events(live_server, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0, "stream": True,
                                      "stream_options": {"continuous_usage_stats": True}})
    assert all(json.loads(e).get("usage") is None for e in events[:-1])


def test_completion_stream_text_equals_non_stream_text(openai_client, plain):
    stream = openai_client.completions.create(model=None, prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == plain


def test_completion_same_seed_gives_same_sample(openai_client):
    def sample():
        return openai_client.completions.create(model=None, prompt=PROMPT, max_tokens=6, temperature=1.0,
                                                seed=42).choices[0].text

    assert sample() == sample()


def test_completion_n_choices_differ_and_repeat_with_seed(openai_client):
    def sample():
        result = openai_client.completions.create(model=None, prompt="Once upon a time", max_tokens=4,
                                                  temperature=1.0, n=2, seed=7)
        return [c.text for c in sorted(result.choices, key=lambda c: c.index)]

    first = sample()
    assert len(set(first)) > 1 and sample() == first


def test_completion_prompt_list_gives_a_choice_per_prompt(openai_client):
    result = openai_client.completions.create(model=None, prompt=["Hello", "Goodbye"], max_tokens=2, temperature=0)
    assert sorted(c.index for c in result.choices) == [0, 1]
    assert result.usage.completion_tokens == 4


def test_completion_token_id_prompt_equals_text_prompt(openai_client, tokenizer, plain):
    ids = tokenizer.encode(PROMPT, add_special_tokens=False)
    result = openai_client.completions.create(model=None, prompt=ids, max_tokens=12, temperature=0)
    assert result.choices[0].text == plain


def test_completion_logprobs_have_openais_legacy_shape(openai_client):
    result = openai_client.completions.create(model=None, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == 4
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert value <= 0 and len(top) == 2 and top[token] == pytest.approx(value)  # greedy: the top token


def test_completion_stop_token_id_ends_generation(openai_client, tokenizer, plain):
    second = tokenizer.encode(PROMPT + plain, add_special_tokens=False)[len(tokenizer.encode(PROMPT)) + 1]
    result = openai_client.completions.create(model=None, prompt=PROMPT, max_tokens=12, temperature=0,
                                              extra_body={"stop_token_ids": [second]})
    assert result.choices[0].finish_reason == "stop" and result.usage.completion_tokens == 2
