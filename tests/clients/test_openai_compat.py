"""The official openai client works unchanged against the server, guidance travelling in
`extra_body`, and gives what the SDK gives (greedy, same guidance => same text)."""

from llmdoctor_client import Guidance

HELLO = [{"role": "user", "content": "What is 2+2?"}]
GUIDANCE = {"alpha": 1.0, "doctors": [{"name": "cheerful", "beta": 0.8}]}
GREEDY = {"max_tokens": 4, "temperature": 0}


def test_openai_completion_with_guidance_equals_the_sdks(openai_client, sdk):
    theirs = openai_client.completions.create(model=None, prompt="Mondays are", extra_body={"guidance": GUIDANCE},
                                              **GREEDY)
    ours = sdk.complete("Mondays are", guidance=Guidance(doctors={"cheerful": 0.8}), **GREEDY)
    assert theirs.choices[0].text == ours.text and theirs.usage.completion_tokens == ours.usage.completion_tokens


def test_openai_chat_with_guidance_equals_the_sdks(openai_client, sdk):
    theirs = openai_client.chat.completions.create(model=None, messages=HELLO, extra_body={"guidance": GUIDANCE},
                                                   **GREEDY)
    assert theirs.choices[0].message.content == sdk.chat(HELLO, guidance=GUIDANCE, **GREEDY).text


def test_openai_chat_stream_with_guidance_equals_the_sdks(openai_client, sdk):
    stream = openai_client.chat.completions.create(model=None, messages=HELLO, stream=True,
                                                   extra_body={"guidance": GUIDANCE}, **GREEDY)
    theirs = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert theirs == "".join(c.text for c in sdk.chat(HELLO, guidance=GUIDANCE, stream=True, **GREEDY))


def test_openai_completion_stream_with_guidance_equals_the_sdks(openai_client, sdk):
    stream = openai_client.completions.create(model=None, prompt="Mondays are", stream=True,
                                              extra_body={"guidance": GUIDANCE}, **GREEDY)
    theirs = "".join(c.choices[0].text for c in stream if c.choices)
    assert theirs == sdk.complete("Mondays are", guidance=GUIDANCE, **GREEDY).text


def test_openai_client_with_options_and_patient_adapter(openai_client):
    """What an OpenAI wrapper (LangChain's ChatOpenAI, ...) does: base_url + key + per-call options."""
    client = openai_client.with_options(timeout=30, max_retries=2)
    reply = client.chat.completions.create(model="pirate", messages=HELLO, **GREEDY)
    assert reply.model == "pirate" and reply.choices[0].message.content
