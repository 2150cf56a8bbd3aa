"""Big inputs: --max-request-bytes (413, Content-Length or counted as it arrives), tokenising off the
event loop (/health answers while a huge prompt is refused), and n beyond what the engine can ever hold
(400 naming the limit, not a 503 that clients retry).

One server of its own with small limits: a 256 KiB body limit, 2 running + 1 waiting requests.
"""

import threading
import time

import httpx
import pytest

from tests.live_server import start_server

LIMIT = 256 * 1024
KEY = "test-key"


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    args = ["--max-request-bytes", str(LIMIT), "--max-batch", "2", "--max-queue", "1"]
    server = start_server(args, tmp_path_factory.mktemp("limits") / "server.log", api_key=KEY)
    yield server
    server.stop()


@pytest.fixture
def client(small_server):
    with small_server.client() as client:
        yield client


def _plain_request_succeeds(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
    assert response.status_code == 200, response.text


def _assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 413
    assert "--max-request-bytes" in error["message"] and str(LIMIT) in error["message"]


def test_body_limit_declared_content_length_over_limit_is_413(client):
    prompt = "a" * (LIMIT + 10)
    _assert_too_large(client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}))
    _plain_request_succeeds(client)


def test_body_limit_chunked_body_without_content_length_is_413(client):
    def chunks():  # a generator body: httpx sends it chunked, with no Content-Length
        yield b'{"max_tokens": 1, "prompt": "'
        for _ in range(LIMIT // 4096 + 2):
            yield b"a" * 4096
        yield b'"}'

    response = client.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    _assert_too_large(response)
    _plain_request_succeeds(client)


def test_body_limit_body_just_under_limit_is_not_413(client):
    prompt = "a" * (LIMIT - 200)
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    assert response.status_code == 400  # past the context, but read, parsed and tokenised
    assert response.json()["error"]["param"] == "prompt"


def test_body_limit_is_counted_on_every_route(client):
    body = {"name": "x", "path": "p" * LIMIT, "kind": "doctor"}
    _assert_too_large(client.post("/v1/adapters", json=body))


def _worst_health_latency(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            assert client.get("/health").status_code == 200
            out.append(time.perf_counter() - start)
            time.sleep(0.02)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_huge_prompt_is_tokenised_off_the_event_loop_health_answers_meanwhile(small_server, client, endpoint):
    text = "the quick brown fox jumps over the lazy dog " * ((LIMIT - 500) // 44)
    body = ({"prompt": text, "max_tokens": 1} if endpoint == "completions"
            else {"messages": [{"role": "user", "content": text}], "max_tokens": 1})
    path = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=_worst_health_latency, args=(small_server.url, stop, latencies))
    prober.start()
    try:
        time.sleep(0.2)
        started = time.perf_counter()
        response = client.post(path, json=body)
        took = time.perf_counter() - started
    finally:
        stop.set()
        prober.join()
    assert response.status_code == 400, response.text
    assert "maximum context length" in response.json()["error"]["message"]
    assert len(latencies) >= 3
    assert max(latencies) < 1.0, f"/health took {max(latencies):.2f} s while the prompt took {took:.2f} s"
    _plain_request_succeeds(client)


def test_n_beyond_batch_plus_queue_is_400_naming_the_limits(client):
    response = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1, "n": 4})
    assert response.status_code == 400, response.text
    assert "retry-after" not in response.headers
    error = response.json()["error"]
    assert error["param"] == "n"
    assert "--max-batch 2" in error["message"] and "--max-queue 1" in error["message"]
    _plain_request_succeeds(client)


def test_n_times_prompts_beyond_batch_plus_queue_is_400(client):
    response = client.post("/v1/completions", json={"prompt": ["Hi", "Yo"], "max_tokens": 1, "n": 2})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "n"


def test_n_at_batch_plus_queue_on_an_idle_server_is_served(client):
    response = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1, "n": 3})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 3
