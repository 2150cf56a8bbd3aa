"""Every call of the sync `Client` against the live server on the embedded model."""

import httpx
import pytest
from llmdoctor_client import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    Client,
    Completion,
    ConflictError,
    Guidance,
    HealthStatus,
    NotFoundError,
    RetryPolicy,
)

from tests.live_server import free_port

HELLO = [{"role": "user", "content": "What is 2+2?"}]
GREEDY = {"max_tokens": 8, "temperature": 0}
LONG = {"max_tokens": 1000, "ignore_eos": True}


def test_chat_returns_typed_reply_with_usage(sdk):
    reply = sdk.chat(HELLO, **GREEDY)
    assert isinstance(reply, ChatCompletion) and reply.text == reply.choices[0].message.content
    assert reply.text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.total_tokens > reply.usage.prompt_tokens


def test_chat_greedy_text_equals_the_openai_clients(sdk, openai_client):
    theirs = openai_client.chat.completions.create(model=None, messages=HELLO, **GREEDY)
    assert sdk.chat(HELLO, **GREEDY).text == theirs.choices[0].message.content


def test_chat_string_is_one_user_message(sdk):
    assert sdk.chat("What is 2+2?", **GREEDY).text == sdk.chat(HELLO, **GREEDY).text


def test_chat_guidance_with_a_doctor_changes_the_reply(sdk):
    guided = sdk.chat(HELLO, guidance=Guidance(doctors={"cheerful": 2.0}), **GREEDY)
    assert guided.text != sdk.chat(HELLO, **GREEDY).text


def test_explain_is_on_each_choice_and_in_the_stream(sdk):
    guidance = Guidance(doctors={"cheerful": 2.0}, explain=True, max_kl=0.5)
    reply = sdk.chat(HELLO, guidance=guidance, **GREEDY)
    explanation = reply.choices[0].explanation
    assert explanation and all(e.kl <= 0.5 + 1e-6 and set(e.doctor_logprobs) == {"cheerful"} for e in explanation)
    assert reply.usage.mean_kl_per_token == pytest.approx(sum(e.kl for e in explanation) / len(explanation))
    with sdk.chat(HELLO, guidance=guidance, stream=True, **GREEDY) as chunks:
        streamed = [e for chunk in chunks for choice in chunk.choices for e in choice.explanation or ()]
    assert streamed == explanation


def test_chat_guidance_as_a_plain_mapping_equals_the_model(sdk):
    as_model = sdk.chat(HELLO, guidance=Guidance(alpha=1.0, doctors={"cheerful": 0.7}), **GREEDY)
    as_dict = sdk.chat(HELLO, guidance={"doctors": [{"name": "cheerful", "beta": 0.7}]}, **GREEDY)
    assert as_model.text == as_dict.text


def test_chat_model_names_a_patient_adapter(sdk):
    assert sdk.chat(HELLO, model="pirate", **GREEDY).model == "pirate"


def test_complete_returns_text_choices_and_usage(sdk):
    result = sdk.complete(["The capital of France is", "One, two,"], max_tokens=3, temperature=0)
    assert isinstance(result, Completion) and result.text == result.choices[0].text
    assert [c.index for c in result.choices] == [0, 1] and result.usage.completion_tokens <= 6


def test_chat_stream_text_equals_the_full_reply(sdk):
    with sdk.chat(HELLO, stream=True, stream_options={"include_usage": True}, **GREEDY) as stream:
        chunks = list(stream)
    assert "".join(c.text for c in chunks) == sdk.chat(HELLO, **GREEDY).text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8


def test_complete_stream_text_equals_the_full_text(sdk):
    streamed = "".join(c.text for c in sdk.complete("Once upon a time", stream=True, **GREEDY))
    assert streamed == sdk.complete("Once upon a time", **GREEDY).text


def test_stream_closed_early_frees_the_slot(sdk, live_server):
    with sdk.complete("Tell me a long story.", stream=True, **LONG) as stream:
        next(stream)
        assert live_server.metric("llmdoctor_running_requests") == 1
    assert live_server.wait_for_metric("llmdoctor_running_requests", 0) == 0


def test_stream_left_by_break_frees_the_slot(sdk, live_server):
    for chunk in sdk.chat("Tell me a long story.", stream=True, **LONG):
        break  # the stream is dropped here: its generator closes the connection
    assert live_server.wait_for_metric("llmdoctor_running_requests", 0) == 0


def test_models_lists_the_patient_its_adapter_and_the_doctor(sdk):
    kinds = {m.id: m.kind for m in sdk.models()}
    assert kinds["SmolLM2-135M-Instruct"] == "patient"
    assert kinds["pirate"] == "patient_adapter" and kinds["cheerful"] == "doctor"


def test_adapters_load_list_and_unload(sdk, second_doctor_adapter_dir):
    card = sdk.adapters.load("terse-sdk", str(second_doctor_adapter_dir), kind="doctor")
    try:
        assert card.name == "terse-sdk" and card.kind == "doctor" and card.rank == 8
        assert "terse-sdk" in [a.name for a in sdk.adapters.list()]
        with pytest.raises(ConflictError) as raised:
            sdk.adapters.load("terse-sdk", str(second_doctor_adapter_dir), kind="doctor")
        assert raised.value.status == 409
    finally:
        assert sdk.adapters.unload("terse-sdk").deleted
    assert "terse-sdk" not in [a.name for a in sdk.adapters.list()]


def test_unload_of_an_unknown_adapter_is_not_found(sdk):
    with pytest.raises(NotFoundError) as raised:
        sdk.adapters.unload("nobody")
    assert raised.value.status == 404 and raised.value.type == "not_found_error"


def test_tokenize_and_detokenize(sdk):
    prompt = sdk.tokenize("Doctors guide, patients speak.", return_token_strs=True)
    assert prompt.count == len(prompt.tokens) == len(prompt.token_strs) and prompt.max_model_len == 2048
    assert sdk.detokenize(prompt.tokens).prompt == "Doctors guide, patients speak."
    chat = sdk.tokenize(messages="Hi!", model="pirate")
    assert chat.count > 3 and chat.token_strs is None
    with pytest.raises(TypeError, match="not both"):
        sdk.tokenize("x", messages="y")


def test_health_is_ok(sdk):
    assert sdk.health() == HealthStatus(status="ok")


def test_bad_request_carries_the_servers_error_json(sdk):
    with pytest.raises(BadRequestError) as raised:
        sdk.chat(HELLO, max_tokens=0)
    error = raised.value
    assert error.status == 400 and error.type == "invalid_request_error" and error.param == "max_tokens"
    assert error.body["error"]["message"] == error.message and "max_tokens" in str(error)


def test_unknown_doctor_is_not_found(sdk):
    with pytest.raises(NotFoundError) as raised:
        sdk.chat(HELLO, guidance=Guidance(doctors={"nobody": 0.5}), **GREEDY)
    assert "nobody" in raised.value.message


def test_wrong_api_key_raises_authentication_error(live_server):
    with Client(live_server.url, api_key="wrong") as client, pytest.raises(AuthenticationError) as raised:
        client.models()
    assert raised.value.status == 401 and raised.value.type == "authentication_error"


def test_base_url_and_api_key_come_from_the_environment(live_server, monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_BASE_URL", live_server.url + "/v1")  # the openai-style URL works too
    monkeypatch.setenv("LLMDOCTOR_API_KEY", live_server.api_key)
    with Client() as client:
        assert client.base_url == live_server.url
        assert client.models()


def test_refused_connection_is_retried_then_raised(monkeypatch):
    attempts = []
    http = httpx.Client(event_hooks={"request": [attempts.append]})
    client = Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(max_retries=2, initial_backoff=0.01),
                    http_client=http)
    with pytest.raises(APIConnectionError) as raised:
        client.chat(HELLO)
    assert len(attempts) == 3 and raised.value.status is None
