import pytest
from pydantic import ValidationError

from llmdoctor.server.api.protocol_chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatStreamChoice,
    DeltaMessage,
)

HI = [{"role": "user", "content": "hi"}]


def test_chat_default_max_tokens_is_the_rest_of_the_context():
    assert ChatCompletionRequest(messages=HI).requested_max_tokens(100, 2048) == 1948


def test_chat_max_completion_tokens_wins_over_max_tokens():
    body = ChatCompletionRequest(messages=HI, max_tokens=10, max_completion_tokens=4)
    assert body.requested_max_tokens(100, 2048) == 4


def test_chat_text_parts_are_joined():
    body = ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                       {"type": "text", "text": "b"}]}])
    assert body.template_messages() == [{"role": "user", "content": "ab"}]


def test_chat_image_part_is_refused_naming_its_type():
    with pytest.raises(ValidationError, match="image_url"):
        ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_chat_unknown_role_is_refused_listing_the_roles():
    with pytest.raises(ValidationError, match="'system', 'developer', 'user' or 'assistant'"):
        ChatCompletionRequest(messages=[{"role": "tool", "content": "x"}])


def test_chat_developer_role_reaches_the_template_as_system():
    body = ChatCompletionRequest(messages=[{"role": "developer", "content": "be brief"}, *HI])
    assert body.template_messages()[0] == {"role": "system", "content": "be brief"}


def test_chat_empty_messages_are_refused():
    with pytest.raises(ValidationError, match="messages"):
        ChatCompletionRequest(messages=[])


def test_chat_top_logprobs_needs_logprobs():
    with pytest.raises(ValidationError, match="top_logprobs needs logprobs"):
        ChatCompletionRequest(messages=HI, top_logprobs=3)


def test_chat_logprobs_map_to_engine_top_k():
    assert ChatCompletionRequest(messages=HI, logprobs=True, top_logprobs=3).to_sampling_params(8).logprobs == 3
    assert ChatCompletionRequest(messages=HI, logprobs=True).to_sampling_params(8).logprobs == 0
    assert ChatCompletionRequest(messages=HI).to_sampling_params(8).logprobs is None


def test_chat_stream_delta_omits_unset_fields():
    chunk = ChatCompletionChunk(id="x", model="m", choices=[ChatStreamChoice(index=0, delta=DeltaMessage(content="a"))])
    assert chunk.model_dump()["choices"][0]["delta"] == {"content": "a"}
