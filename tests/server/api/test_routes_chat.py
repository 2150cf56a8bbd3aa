"""POST /v1/chat/completions on the live server: template, streaming, logprobs, guidance, adapters."""

import pytest

from tests.adapters import SYSTEM, greedy_reply

QUESTION = "What is your favourite colour?"
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


def chat(client, **kwargs):
    kwargs.setdefault("max_tokens", 16)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=kwargs.pop("model", "SmolLM2-135M-Instruct"),
                                          messages=MESSAGES, **kwargs)


@pytest.fixture(scope="module")
def plain_reply(openai_client):
    return chat(openai_client).choices[0].message.content


def test_chat_greedy_reply_equals_transformers_generate(plain_reply, embedded_model):
    assert plain_reply == greedy_reply(embedded_model.folder, QUESTION, max_new_tokens=16)


def test_chat_response_has_openai_shape(openai_client):
    result = chat(openai_client, max_tokens=3)
    assert result.object == "chat.completion" and result.id.startswith("chatcmpl-")
    assert result.choices[0].message.role == "assistant" and result.usage.completion_tokens == 3


def test_chat_stream_sends_role_then_content_then_finish(openai_client, plain_reply):
    chunks = list(chat(openai_client, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain_reply
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_stream_continuous_usage_from_the_role_chunk_on(openai_client):
    stream = openai_client.chat.completions.create(
        model=None, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].usage.completion_tokens == 0
    counts = [c.usage.completion_tokens for c in chunks[:-1]]
    assert counts == sorted(counts) and counts[-1] == chunks[-1].usage.completion_tokens
    assert all(c.usage.prompt_tokens == chunks[0].usage.prompt_tokens for c in chunks)


def test_chat_max_completion_tokens_limits_the_reply(openai_client):
    result = chat(openai_client, max_tokens=None, max_completion_tokens=2)
    assert result.usage.completion_tokens == 2 and result.choices[0].finish_reason == "length"


def test_chat_logprobs_have_openais_chat_shape(openai_client):
    result = chat(openai_client, max_tokens=3, logprobs=True, top_logprobs=2)
    content = result.choices[0].logprobs.content
    assert len(content) == 3
    assert "".join(entry.token for entry in content) == result.choices[0].message.content
    for entry in content:
        assert entry.bytes == list(entry.token.encode()) and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely token


def test_chat_guidance_with_zero_beta_equals_plain_decoding(openai_client, plain_reply):
    guided = chat(openai_client, extra_body={"guidance": {"doctors": [{"name": "cheerful", "beta": 0.0}]}})
    assert guided.choices[0].message.content == plain_reply


def test_chat_guidance_doctor_changes_the_reply(openai_client, plain_reply):
    guidance = {"alpha": 1.0, "doctors": [{"name": "cheerful", "beta": 1.0}]}
    guided = chat(openai_client, extra_body={"guidance": guidance})
    assert guided.choices[0].message.content != plain_reply


def test_chat_guidance_mapping_form_equals_list_form(openai_client):
    listed = chat(openai_client, max_tokens=6,
                  extra_body={"guidance": {"doctors": [{"name": "cheerful", "beta": 0.7}]}})
    mapped = chat(openai_client, max_tokens=6, extra_body={"guidance": {"doctors": {"cheerful": 0.7}}})
    assert listed.choices[0].message.content == mapped.choices[0].message.content


def test_chat_model_naming_a_patient_adapter_uses_it(openai_client, embedded_model, patient_adapter_dir):
    result = chat(openai_client, model="pirate")
    expected = greedy_reply(embedded_model.folder, QUESTION, adapter_dir=patient_adapter_dir, max_new_tokens=16)
    assert result.model == "pirate" and result.choices[0].message.content == expected


def test_chat_stream_with_two_choices_streams_each_to_its_finish(openai_client):
    chunks = list(chat(openai_client, max_tokens=3, n=2, temperature=1.0, seed=3, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "length"
