"""Graceful shutdown of the real process: SIGTERM lets short requests finish and ends long ones cleanly."""

import json
import signal
import threading
import time

import httpx

from tests.live_server import start_server


def stream_events(url, body, out):
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(line.removeprefix("data: "))


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_sigterm_finishes_short_streams_and_ends_long_ones_with_abort(tmp_path):
    server = start_server(["--shutdown-grace", "5"], tmp_path / "server.log")
    short, long = [], []
    bodies = (
        (short, {"prompt": "Hi", "max_tokens": 2}),
        (long, {"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True}),
    )
    threads = [threading.Thread(target=stream_events, args=(server.url, body, out)) for out, body in bodies]
    for thread in threads:
        thread.start()
    wait_until(lambda: short and long)  # both are decoding: one token in, one to go for the short one
    assert server.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join()
    assert short[-1] == long[-1] == "[DONE]"
    assert json.loads(short[-2])["choices"][0]["finish_reason"] in ("length", "stop")
    assert json.loads(long[-2])["choices"][0]["finish_reason"] == "abort"
