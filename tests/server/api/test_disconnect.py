"""A client that goes away frees its engine slot at once (live server, /metrics running gauge)."""

import httpx

LONG = {"prompt": "Write a very long story about a dragon.", "max_tokens": 1000, "ignore_eos": True}


def test_disconnect_mid_stream_aborts_the_engine_request(live_server):
    with live_server.client() as http, http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()  # keep a reference: dropping the iterator closes the connection
        assert next(lines).startswith('data: {"id"')
        assert live_server.metric("llmdoctor_running_requests") == 1
    assert live_server.wait_for_metric("llmdoctor_running_requests", 0) == 0


def test_disconnect_while_waiting_for_a_full_answer_aborts_it(live_server):
    with live_server.client(timeout=1.5) as http:
        try:
            http.post("/v1/completions", json=LONG)
        except httpx.ReadTimeout:
            pass  # we hang up while the server is still generating
    assert live_server.wait_for_metric("llmdoctor_running_requests", 0) == 0
