"""Strings that are not valid Unicode text (lone surrogates, from `\\ud800` JSON escapes or raw CESU-8
bytes) are a 400 naming the field, never a 500; a plain request right after still succeeds."""

import json

import httpx
import pytest

from llmdoctor.server.api.text_validation import first_invalid_text

LONE = "\ud800"
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"prompt": "Hi", "max_tokens": 2}


def _post(live_server, path: str, body: dict) -> httpx.Response:
    content = json.dumps(body)  # ensure_ascii: a lone surrogate travels as the escape \ud800
    with live_server.client() as client:
        return client.post(path, content=content, headers={"Content-Type": "application/json"})


def _assert_invalid_text(response: httpx.Response, param: str | None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert "not valid Unicode text" in error["message"] and "\\ud800" in error["message"]


def _plain_request_succeeds(live_server) -> None:
    assert _post(live_server, "/v1/chat/completions", CHAT).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {**COMPLETION, "prompt": f"a{LONE}b"}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": ["ok", LONE]}, "prompt[1]"),
        ("/v1/completions", {**COMPLETION, "stop": ["x", LONE]}, "stop[1]"),
        ("/v1/completions", {**COMPLETION, "model": LONE}, "model"),
        ("/v1/completions", {**COMPLETION, "user": LONE}, "user"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": LONE}]}, "messages[0].content"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
         "messages[0].content[0].text"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "Hi", "name": LONE}]},
         "messages[0].name"),
        ("/v1/chat/completions", {**CHAT, "stop": LONE}, "stop"),
        ("/v1/chat/completions", {**CHAT, "guidance": {"doctors": [{"name": LONE, "beta": 0.5}]}},
         "guidance.doctors[0].name"),
        ("/v1/chat/completions", {**CHAT, "guidance": {"doctors": {LONE: 0.5}}}, "guidance.doctors"),
        ("/v1/chat/completions", {**CHAT, LONE: 1}, None),
        ("/v1/adapters", {"name": LONE, "path": "cheerful", "kind": "doctor"}, "name"),
        ("/v1/adapters", {"name": "x", "path": LONE, "kind": "doctor"}, "path"),
    ],
)
def test_text_validation_lone_surrogate_is_400_naming_the_field(live_server, path, body, param):
    _assert_invalid_text(_post(live_server, path, body), param)
    _plain_request_succeeds(live_server)


def test_text_validation_raw_cesu8_surrogate_bytes_are_400(live_server):
    content = b'{"prompt": "a\xed\xa0\x80b", "max_tokens": 2}'  # json.loads(bytes) lets these through
    with live_server.client() as client:
        response = client.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})
    _assert_invalid_text(response, "prompt")
    _plain_request_succeeds(live_server)


def test_text_validation_invalid_utf8_body_is_400_saying_so(live_server):
    with live_server.client() as client:
        response = client.post("/v1/completions", content=b'{"prompt": "a\xffb"}',
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "not valid UTF-8" in response.json()["error"]["message"]
    _plain_request_succeeds(live_server)


def test_text_validation_surrogate_pair_is_valid_text(live_server):
    body = {**CHAT, "messages": [{"role": "user", "content": "Smile \ud83d\ude00"}]}  # an emoji, escaped as a pair
    assert "\\ud83d\\ude00" in json.dumps(body)
    assert _post(live_server, "/v1/chat/completions", body).status_code == 200


def test_text_validation_nul_character_in_prompt_is_served(live_server):
    assert _post(live_server, "/v1/completions", {**COMPLETION, "prompt": "a\u0000b"}).status_code == 200


def test_first_invalid_text_finds_the_first_in_document_order():
    body = {"a": ["ok", {"b": LONE}], "c": LONE}
    assert first_invalid_text(body) == ("a[1].b", 0, LONE)


def test_first_invalid_text_valid_body_is_none():
    assert first_invalid_text({"prompt": ["é", [1, 2]], "n": 2, "guidance": None}) is None
