"""POST /tokenize and /detokenize on the live server: vLLM's shapes, the ids a completion would see."""

import pytest


@pytest.fixture(scope="module")
def client(live_server):
    with live_server.client() as client:
        yield client


def test_tokenize_gives_the_ids_a_completion_prompt_costs(client, tokenizer, openai_client):
    body = client.post("/tokenize", json={"prompt": "Hello there, doctor!"}).json()
    assert body["tokens"] == tokenizer.encode("Hello there, doctor!", add_special_tokens=False)
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 2048
    assert body["token_strs"] is None
    usage = openai_client.completions.create(model=None, prompt="Hello there, doctor!", max_tokens=1).usage
    assert usage.prompt_tokens == body["count"]


def test_tokenize_returns_token_strings_on_request(client, tokenizer):
    body = client.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])


def test_tokenize_chat_applies_the_template_as_chat_completions_do(client, tokenizer, openai_client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    body = client.post("/tokenize", json={"messages": messages, "model": "pirate"}).json()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert body["tokens"] == tokenizer.encode(text, add_special_tokens=False)
    usage = openai_client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=1).usage
    assert usage.prompt_tokens == body["count"]
    bare = client.post("/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert bare["count"] < body["count"]


def test_detokenize_round_trips(client):
    text = "Doctors guide, patients speak. <|im_end|>"
    ids = client.post("/tokenize", json={"prompt": text}).json()["tokens"]
    assert client.post("/detokenize", json={"tokens": ids}).json() == {"prompt": text}


@pytest.mark.parametrize("path, body, status, field", [
    ("/tokenize", {"prompt": "x", "model": "nobody"}, 404, "model"),
    ("/tokenize", {"prompt": "x", "model": "cheerful"}, 400, "model"),  # a doctor is not a model
    ("/tokenize", {"prompt": 3}, 400, "prompt"),
    ("/tokenize", {"prompt": "x", "temperature": 1}, 400, "temperature"),
    ("/tokenize", {"messages": []}, 400, "messages"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, 400,
     "continue_final_message"),
    ("/tokenize", {}, 400, "prompt"),
    ("/detokenize", {"tokens": [1, 49152]}, 400, "tokens"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/detokenize", {"tokens": "12"}, 400, "tokens"),
    ("/detokenize", {"tokens": [1], "model": "nobody"}, 404, "model"),
])
def test_bad_input_names_the_field(client, path, body, status, field):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert field in (error.get("param") or "") + error["message"], error


def test_tokenize_needs_the_api_key(live_server):
    import httpx

    assert httpx.post(f"{live_server.url}/tokenize", json={"prompt": "x"}).status_code == 401
