"""LangChain's ChatOpenAI (langchain-openai) works unchanged against the server, guidance travelling
in `extra_body`, offline, and gives what the SDK gives (greedy, same seed and guidance => same text)."""

import socket

import pytest
from langchain_openai import ChatOpenAI

GUIDANCE = {"alpha": 1.0, "doctors": [{"name": "cheerful", "beta": 0.8}]}
SAMPLING = {"temperature": 0, "seed": 7, "max_tokens": 6}
QUESTION = "What is 2+2?"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any connection off this machine: LangChain must not reach OpenAI, LangSmith or tiktoken's CDN."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="module")
def chat_model(live_server, sdk):
    patient = next(m.id for m in sdk.models() if m.kind == "patient")
    return ChatOpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.api_key, model=patient,
                      extra_body={"guidance": GUIDANCE}, max_retries=0, timeout=60, **SAMPLING)


def test_langchain_invoke_with_guidance_equals_the_sdks(chat_model, sdk):
    theirs = chat_model.invoke(QUESTION)
    assert theirs.content and theirs.content == sdk.chat(QUESTION, guidance=GUIDANCE, **SAMPLING).text


def test_langchain_stream_with_guidance_equals_the_sdks(chat_model, sdk):
    theirs = "".join(chunk.content for chunk in chat_model.stream(QUESTION))
    assert theirs == sdk.chat(QUESTION, guidance=GUIDANCE, **SAMPLING).text
