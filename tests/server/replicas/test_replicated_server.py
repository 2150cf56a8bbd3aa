"""`llmdoctor serve --replicas 2`: the API on Ray Serve in front of 2 engine replicas of the embedded
model, on a local Ray the server starts itself. One server for the module (~1-2 min to start)."""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.live_server import LiveServer, free_port

pytestmark = pytest.mark.slow
START_TIMEOUT = 400.0  # Ray, Serve's controller and proxy, 2 replicas loading the model, the gateway


def _replicas(server: LiveServer) -> list[dict]:
    return httpx.get(f"{server.url}/health", timeout=10).json().get("replicas", [])


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy_replicas(server: LiveServer) -> list[dict]:
    try:
        return [r for r in _replicas(server) if r["healthy"]]
    except (httpx.HTTPError, json.JSONDecodeError):
        return []


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, adapter_root, doctor_adapter_dir, patient_adapter_dir) -> LiveServer:
    port = free_port()
    log_path = tmp_path_factory.mktemp("replicated") / "server.log"
    command = [sys.executable, "-m", "llmdoctor.server.cli", "serve", "--replicas", "2", "--port", str(port),
               "--adapter-root", str(adapter_root), "--max-batch", "8"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_for(lambda: process.poll() is not None or len(_healthy_replicas(server)) == 2, START_TIMEOUT,
                  "2 healthy replicas")
        assert process.poll() is None, server.log()[-5000:]
        yield server
    finally:
        code = server.stop(signal.SIGTERM, timeout=90)
        assert code == 0, server.log()[-5000:]


def _chat(server: LiveServer, content: str, **extra) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0, **extra}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=180)


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _tokens_by_replica(server: LiveServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("llmdoctor_replica_generated_tokens{"):
            replica = line.split('replica="')[1].split('"')[0]
            out[replica] = float(line.rsplit(" ", 1)[1])
    return out


def test_health_lists_both_replicas_and_metrics_label_them(replicated):
    replicas = _replicas(replicated)
    assert len(replicas) == 2 and all(r["healthy"] and r["pid"] for r in replicas)
    assert len(_tokens_by_replica(replicated)) == 2


def test_traffic_reaches_both_replicas_with_the_same_greedy_answers(replicated):
    before = _tokens_by_replica(replicated)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _text(_chat(replicated, "Name a fruit.")), range(16)))
    assert len(set(answers)) == 1, answers
    after = _wait_for(lambda: (lambda now: now if all(now[r] > before.get(r, 0) for r in now) else None)(
        _tokens_by_replica(replicated)), 10, "both replicas to report generated tokens")
    assert len(after) == 2


def test_streaming_passes_through(replicated):
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0, "stream": True}
    chunks = []
    with httpx.stream("POST", f"{replicated.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(chunks) >= 3 and text == _text(_chat(replicated, "Say hi.", max_tokens=8))


def test_adapters_loaded_during_traffic_reach_the_replicas(replicated, live_server, doctor_adapter_dir,
                                                          patient_adapter_dir):
    stop = False

    def traffic() -> int:
        sent = 0
        while not stop:
            assert _chat(replicated, "What is rain?", max_tokens=6).status_code == 200
            sent += 1
        return sent

    guided = {"guidance": {"doctors": {"cheerful": 2.0}}}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        background = [pool.submit(traffic) for _ in range(2)]
        try:
            for name, kind, folder in (("cheerful", "doctor", doctor_adapter_dir),
                                       ("pirate", "patient", patient_adapter_dir)):
                loaded = httpx.post(f"{replicated.url}/v1/adapters", timeout=300,
                                    json={"name": name, "path": str(folder), "kind": kind})
                assert loaded.status_code == 200, loaded.text
            # usable at once: the load returned after every replica held the doctor
            with concurrent.futures.ThreadPoolExecutor(8) as burst:
                doctor_answers = list(burst.map(lambda _: _text(_chat(replicated, "How was your day?", **guided)),
                                                range(8)))
                pirate_answers = list(burst.map(lambda _: _text(_chat(replicated, "Hello!", model="pirate")),
                                                range(8)))
        finally:
            stop = True
        assert all(f.result() > 0 for f in background)  # traffic ran the whole time, nothing failed
    # /health shows it on every replica from their next report (once a second)
    _wait_for(lambda: all("cheerful" in r["adapters"] for r in _replicas(replicated)), 10, "the doctor in /health")

    # same greedy output from whichever replica, and the same as the in-process server gives
    reference = live_server.client()
    expected_doctor = reference.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "How was your day?"}], "max_tokens": 12, "temperature": 0,
        **guided}).json()["choices"][0]["message"]["content"]
    expected_pirate = reference.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 12, "temperature": 0,
        "model": "pirate"}).json()["choices"][0]["message"]["content"]
    assert set(doctor_answers) == {expected_doctor} and set(pirate_answers) == {expected_pirate}
    assert expected_doctor != _text(_chat(replicated, "How was your day?"))  # the doctor changed it
    # the patient adapter went through multiplexing: a replica holds it under its generation id
    assert any(a.startswith("pirate@") for r in _replicas(replicated) for a in r["adapters"])
    models = httpx.get(f"{replicated.url}/v1/models", timeout=10).json()["data"]
    assert {"cheerful", "pirate"} <= {m["id"] for m in models}


def test_bad_requests_get_the_same_errors_as_in_process(replicated):
    unknown = _chat(replicated, "Hi", guidance={"doctors": {"nobody": 1.0}})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "guidance.doctors[0].name"
    too_long = _chat(replicated, "Hi " * 3000)
    assert too_long.status_code == 400 and "context" in too_long.json()["error"]["message"]


def test_a_folder_only_the_replicas_checks_refuse_is_a_400_and_changes_nothing(replicated, adapter_root,
                                                                               doctor_adapter_dir):
    # The gateway checks names and options; shapes against the model's layers are each replica's own
    # check (on its own disk, against its own model): the load must come back refused, on every replica.
    from safetensors.torch import load_file, save_file

    folder = adapter_root / "replicas-bad-shape"
    shutil.copytree(doctor_adapter_dir, folder, dirs_exist_ok=True)
    tensors = load_file(folder / "adapter_model.safetensors")
    q0 = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors[f"{q0}.lora_A.weight"] = tensors[f"{q0}.lora_A.weight"][:, :500].contiguous()
    tensors[f"{q0}.lora_B.weight"] = tensors[f"{q0}.lora_B.weight"][:500].contiguous()
    save_file(tensors, folder / "adapter_model.safetensors")
    plain_before = _text(_chat(replicated, "Where is Rome?"))
    adapters_before = httpx.get(f"{replicated.url}/v1/adapters", timeout=10).json()
    refused = httpx.post(f"{replicated.url}/v1/adapters", timeout=300,
                         json={"name": "misshapen", "path": folder.name, "kind": "doctor"})
    assert refused.status_code == 400 and "q_proj" in refused.json()["error"]["message"], refused.text
    assert httpx.get(f"{replicated.url}/v1/adapters", timeout=10).json() == adapters_before
    assert _chat(replicated, "Hi", guidance={"doctors": {"misshapen": 1.0}}).status_code == 404
    assert _text(_chat(replicated, "Where is Rome?")) == plain_before


def test_a_killed_replica_loses_no_unstreamed_request_and_comes_back(replicated):
    before = _replicas(replicated)
    victim = before[0]

    def plain() -> str:
        return _text(_chat(replicated, "Tell me a long story about a cat.", max_tokens=40))

    def streamed() -> str:
        body = {"messages": [{"role": "user", "content": "Tell me about dogs."}], "max_tokens": 40,
                "temperature": 0, "stream": True}
        events = []
        with httpx.stream("POST", f"{replicated.url}/v1/chat/completions", json=body, timeout=180) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"  # ended, with or without an error event before [DONE]
        return "error" if any('"error"' in e for e in events) else "ok"

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        plains = [pool.submit(plain) for _ in range(8)]
        streams = [pool.submit(streamed) for _ in range(4)]
        time.sleep(1.5)  # mid-decode on both replicas
        os.kill(victim["pid"], signal.SIGKILL)
        answers = [f.result(timeout=240) for f in plains]  # none lost: retried on the other replica
        outcomes = [f.result(timeout=240) for f in streams]  # none hangs
    assert len(set(answers)) == 1, answers
    assert set(outcomes) <= {"ok", "error"}

    # Serve starts a new replica; it loads the current doctor set before taking traffic
    back = _wait_for(lambda: (lambda rs: rs if len(rs) == 2 and victim["replica"] not in {r["replica"] for r in rs}
                              else None)(_healthy_replicas(replicated)), 240, "a new replica")
    fresh = next(r for r in back if r["replica"] not in {b["replica"] for b in before})
    doctors = {m["id"] for m in httpx.get(f"{replicated.url}/v1/models", timeout=10).json()["data"]
               if m["kind"] == "doctor"}
    assert doctors <= set(fresh["adapters"]), (doctors, fresh)
