"""The `AsyncClient` has the sync client's surface; each call once against the live server."""

import pytest
from llmdoctor_client import AsyncClient, ChatCompletion, Completion, Guidance, HealthStatus, NotFoundError

HELLO = [{"role": "user", "content": "What is 2+2?"}]
GREEDY = {"max_tokens": 6, "temperature": 0}


async def test_async_chat_equals_sync_chat(async_sdk, sdk):
    reply = await async_sdk.chat(HELLO, guidance=Guidance(doctors={"cheerful": 0.7}), **GREEDY)
    assert isinstance(reply, ChatCompletion) and reply.usage.completion_tokens <= 6
    assert reply.text == sdk.chat(HELLO, guidance=Guidance(doctors={"cheerful": 0.7}), **GREEDY).text


async def test_async_complete_and_its_stream_agree(async_sdk):
    full = await async_sdk.complete("Once upon a time", **GREEDY)
    async with await async_sdk.complete("Once upon a time", stream=True, **GREEDY) as stream:
        streamed = "".join([chunk.text async for chunk in stream])
    assert isinstance(full, Completion) and streamed == full.text


async def test_async_chat_stream_closed_early_frees_the_slot(async_sdk, live_server):
    stream = await async_sdk.chat("Tell me a long story.", stream=True, max_tokens=1000, ignore_eos=True)
    async with stream:
        async for _ in stream:
            break
    assert live_server.wait_for_metric("llmdoctor_running_requests", 0) == 0


async def test_async_models_adapters_and_health(async_sdk):
    assert "cheerful" in [m.id for m in await async_sdk.models()]
    assert {"cheerful", "pirate"} <= {a.name for a in await async_sdk.adapters.list()}
    assert await async_sdk.health() == HealthStatus(status="ok")
    with pytest.raises(NotFoundError):
        await async_sdk.adapters.unload("nobody")


async def test_async_tokenize_agrees_with_sync(async_sdk, sdk):
    ours = await async_sdk.tokenize(messages=[{"role": "user", "content": "Hi!"}])
    assert ours == sdk.tokenize(messages="Hi!")
    assert (await async_sdk.detokenize(ours.tokens)).prompt == sdk.detokenize(ours.tokens).prompt


async def test_async_client_reads_the_environment(live_server, monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_BASE_URL", live_server.url)
    monkeypatch.setenv("LLMDOCTOR_API_KEY", live_server.api_key)
    async with AsyncClient() as client:
        assert (await client.chat(HELLO, max_tokens=1)).usage.completion_tokens == 1
