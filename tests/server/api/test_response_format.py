"""response_format over HTTP, through the official openai client: JSON mode and JSON schema, with and without
guidance, streamed too; what cannot be enforced is a 400 naming it."""

import json

import httpx
import jsonschema
import pytest

from tests.server.engine.test_structured_output import PERSON

SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.mark.parametrize("guidance", [None, {"doctors": {"cheerful": 1.5}}], ids=["unguided", "guided"])
def test_chat_json_schema_output_validates(openai_client, guidance):
    reply = openai_client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Describe a person."}], max_tokens=120,
        temperature=0.8, seed=2, response_format=SCHEMA_FORMAT, extra_body={"guidance": guidance} if guidance else None)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_completion_json_object_streamed_parses(live_server):
    text, finish = "", None
    with httpx.stream("POST", f"{live_server.url}/v1/completions", headers=live_server.headers, timeout=120, json={
            "prompt": "A JSON object describing a cat:", "max_tokens": 120, "stream": True, "temperature": 0,
            "response_format": {"type": "json_object"}}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                finish = choice["finish_reason"] or finish
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens, which the finish reason says
        assert finish == "length" and text.lstrip().startswith("{")


@pytest.mark.parametrize("response_format, named", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}},
     "uniqueItems"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "nonsense"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, "json_schema"),
    ({"type": "yaml"}, "response_format"),
])
def test_what_cannot_be_enforced_is_a_400_naming_it(live_server, response_format, named):
    response = httpx.post(f"{live_server.url}/v1/chat/completions", headers=live_server.headers, timeout=60, json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "response_format": response_format})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert named in error["message"] or named in (error["param"] or "")
