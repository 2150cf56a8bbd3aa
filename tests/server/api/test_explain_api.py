"""guidance.explain, guidance.max_kl and usage.mean_kl_per_token over HTTP, on the live torch-engine server."""

import json

PROMPT = {"prompt": "Tell me about your day.", "max_tokens": 8, "temperature": 0}
GUIDED = {"doctors": [{"name": "cheerful", "beta": 2.0}]}


def _events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_completion_explanation_matches_logprobs_and_usage(live_server):
    with live_server.client() as http:
        response = http.post("/v1/completions", json={**PROMPT, "logprobs": 0,
                                                      "guidance": {**GUIDED, "explain": True}})
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    explanation, logprobs = choice["explanation"], choice["logprobs"]
    assert [e["token"] for e in explanation] == logprobs["tokens"]
    assert [e["rule_logprob"] for e in explanation] == logprobs["token_logprobs"]
    assert all(set(e["doctor_logprobs"]) == {"cheerful"} and e["kl"] >= 0 and e["beta_scale"] == 1.0
               for e in explanation)
    mean = sum(e["kl"] for e in explanation) / len(explanation)
    assert abs(body["usage"]["mean_kl_per_token"] - mean) < 1e-4


def test_chat_stream_carries_the_explanation_token_by_token(live_server):
    request = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 6, "temperature": 0,
               "stream": True, "stream_options": {"include_usage": True},
               "guidance": {**GUIDED, "explain": True}}
    with live_server.client() as http:
        streamed = http.post("/v1/chat/completions", json=request)
        whole = http.post("/v1/chat/completions", json={**request, "stream": False, "stream_options": None})
    assert streamed.status_code == 200 and whole.status_code == 200, (streamed.text, whole.text)
    chunks = _events(streamed)
    entries = [e for c in chunks for choice in c["choices"] for e in (choice.get("explanation") or [])]
    text = "".join(choice["delta"].get("content") or "" for c in chunks for choice in c["choices"])
    # every generated token is explained, the EOS that ended the choice too (as logprobs list it)
    explained = "".join(e["token"] for e in entries).removesuffix("<|im_end|>")
    assert explained == text == whole.json()["choices"][0]["message"]["content"]
    assert entries == whole.json()["choices"][0]["explanation"]
    assert chunks[-1]["usage"]["mean_kl_per_token"] == whole.json()["usage"]["mean_kl_per_token"] > 0


def test_max_kl_bounds_every_step_over_http(live_server):
    with live_server.client() as http:
        response = http.post("/v1/completions", json={
            **PROMPT, "max_tokens": 12, "guidance": {**GUIDED, "explain": True, "max_kl": 0.05}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert all(e["kl"] <= 0.05 + 1e-6 for e in body["choices"][0]["explanation"])
    assert body["usage"]["mean_kl_per_token"] <= 0.05 + 1e-6


def test_unguided_usage_has_no_kl_and_no_explanation(live_server):
    with live_server.client() as http:
        body = http.post("/v1/completions", json=PROMPT).json()
    assert body["usage"]["mean_kl_per_token"] is None and body["choices"][0]["explanation"] is None


def test_bad_max_kl_is_400_naming_the_field(live_server):
    with live_server.client() as http:
        for bad in (-1, "a lot", 1e6):
            response = http.post("/v1/completions", json={**PROMPT, "guidance": {**GUIDED, "max_kl": bad}})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "guidance.max_kl"
