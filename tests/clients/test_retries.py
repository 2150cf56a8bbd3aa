"""Retries: on a real one-slot server whose queue is full (503 + Retry-After), and with a fake
transport only for the fault that cannot be caused for real (a stream cut mid-way)."""

import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from llmdoctor_client import APIConnectionError, APIError, Client, OverloadedError, RetryPolicy, ServerTimeoutError

from tests.live_server import start_server

LONG = {"max_tokens": 1000, "ignore_eos": True}


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory):
    server = start_server(["--max-batch", "1", "--max-queue", "1"], tmp_path_factory.mktemp("sdk_slot") / "server.log")
    yield server
    server.stop()


@contextmanager
def full_queue(server):
    """One request running (a stream held open) and one waiting: the next one gets 503."""
    with Client(server.url) as holder, holder.complete("Tell me a long story.", stream=True, **LONG) as stream:
        next(stream)
        queued = threading.Thread(target=lambda: httpx.post(f"{server.url}/v1/completions",
                                                           json={"prompt": "Hi", "max_tokens": 2}, timeout=60))
        queued.start()
        assert server.wait_for_metric("llmdoctor_queue_depth", 1) == 1
        yield stream
    queued.join()


def test_full_queue_without_retries_raises_overloaded_with_retry_after(one_slot_server):
    with full_queue(one_slot_server), Client(one_slot_server.url, max_retries=0) as client, \
            pytest.raises(OverloadedError) as raised:
        client.complete("Hi", max_tokens=2)
    assert raised.value.status == 503 and raised.value.type == "server_overloaded"
    assert raised.value.retry_after >= 1


def test_full_queue_is_retried_until_the_server_has_room(one_slot_server):
    statuses, results = [], []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    client = Client(one_slot_server.url, http_client=http, retry=RetryPolicy(max_retries=6, initial_backoff=0.2))
    with full_queue(one_slot_server) as stream:
        caller = threading.Thread(target=lambda: results.append(client.complete("Hi", max_tokens=2)))
        caller.start()
        deadline = time.monotonic() + 30
        while 503 not in statuses and time.monotonic() < deadline:
            time.sleep(0.05)
        stream.close()  # frees the slot: the queued request runs, then the retry gets in
    caller.join(60)
    assert statuses[0] == 503 and statuses[-1] == 200
    assert results and results[0].usage.completion_tokens <= 2


def _broken_stream_transport(calls: list) -> httpx.MockTransport:
    """A server whose stream sends one chunk then breaks (a fault a real server cannot be made to do)."""

    class Broken(httpx.SyncByteStream):
        def __iter__(self):
            yield b'data: {"id": "c", "model": "m", "choices": [{"index": 0, "text": "Hi"}]}\n\n'
            raise httpx.ReadError("connection reset")

    def handle(request):
        calls.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Broken())

    return httpx.MockTransport(handle)


def test_a_stream_that_started_is_never_retried():
    calls = []
    http = httpx.Client(transport=_broken_stream_transport(calls))
    client = Client("http://sdk.test", max_retries=3, http_client=http)
    stream = client.complete("Hi", stream=True)
    assert next(stream).text == "Hi"
    with pytest.raises(APIConnectionError):
        next(stream)
    assert len(calls) == 1


def test_policy_retries_a_post_only_if_it_was_never_sent():
    policy = RetryPolicy(max_retries=3)
    assert policy.delay(APIConnectionError("refused"), 0, replayable=True) is not None
    assert policy.delay(APIConnectionError("reset mid-answer"), 0, replayable=False) is None


def test_policy_never_retries_a_server_timeout_nor_past_max_retries():
    policy = RetryPolicy(max_retries=1)
    assert policy.delay(ServerTimeoutError("slow", status=504), 0, replayable=True) is None
    assert policy.delay(OverloadedError("full", status=503), 1, replayable=True) is None


def test_policy_waits_at_least_retry_after_and_backs_off_exponentially():
    policy = RetryPolicy(max_retries=5, initial_backoff=0.5, max_backoff=8)
    asked = OverloadedError("full", status=503, headers=httpx.Headers({"retry-after": "3"}))
    assert 3 <= policy.delay(asked, 0, replayable=False) <= 3.75
    plain = APIError("busy", status=429)
    delays = [policy.delay(plain, attempt, replayable=False) for attempt in range(5)]
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1 and 4 <= delays[4] <= 8


def test_policy_gives_up_when_retry_after_is_too_long():
    asked = OverloadedError("full", status=503, headers=httpx.Headers({"retry-after": "3600"}))
    assert RetryPolicy(max_retries=3).delay(asked, 0, replayable=False) is None
