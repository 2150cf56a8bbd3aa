"""Admission and deadlines, each on a one-slot server of its own."""

import json
import threading

import httpx
import pytest

from tests.live_server import start_server

LONG = {"prompt": "Tell me a long story.", "max_tokens": 1000, "ignore_eos": True}


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory):
    server = start_server(["--max-batch", "1", "--max-queue", "1"], tmp_path_factory.mktemp("slot") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory):
    server = start_server(["--request-timeout", "2"], tmp_path_factory.mktemp("impatient") / "server.log")
    yield server
    server.stop()


def test_queue_full_is_503_with_retry_after(one_slot_server):
    url = f"{one_slot_server.url}/v1/completions"
    with one_slot_server.client() as http, http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()  # keep a reference: dropping the iterator closes the connection
        assert next(lines).startswith('data: {"id"')  # 1 running
        queued = threading.Thread(target=lambda: httpx.post(url, json={**LONG, "max_tokens": 2}, timeout=60))
        queued.start()
        assert one_slot_server.wait_for_metric("llmdoctor_queue_depth", 1) == 1  # 1 waiting
        response = httpx.post(url, json=LONG)
    queued.join()
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["type"] == "server_overloaded"


def test_timeout_of_a_full_answer_is_504_and_frees_the_slot(impatient_server):
    response = httpx.post(f"{impatient_server.url}/v1/completions", json=LONG, timeout=30)
    assert response.status_code == 504 and "--request-timeout" in response.json()["error"]["message"]
    assert impatient_server.wait_for_metric("llmdoctor_running_requests", 0) == 0


def test_timeout_of_a_stream_ends_it_with_an_error_event(impatient_server):
    with impatient_server.client() as http, http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == 504
