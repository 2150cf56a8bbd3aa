"""GET /health and GET /metrics on the live server."""

import httpx


def test_health_is_200_while_the_engine_runs(live_server):
    response = httpx.get(f"{live_server.url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_metrics_expose_the_documented_series(live_server, openai_client):
    openai_client.completions.create(model=None, prompt="Hi", max_tokens=2, temperature=0)
    text = httpx.get(f"{live_server.url}/metrics").text
    for name in (
        "llmdoctor_requests_total",
        "llmdoctor_prompt_tokens_total",
        "llmdoctor_generation_tokens_total",
        "llmdoctor_time_to_first_token_seconds_bucket",
        "llmdoctor_inter_token_latency_seconds_bucket",
        "llmdoctor_e2e_request_latency_seconds_bucket",
        "llmdoctor_queue_depth",
        "llmdoctor_running_requests",
        'llmdoctor_adapters_loaded{kind="doctor"}',
    ):
        assert name in text, name


def test_metrics_count_requests_by_route_and_status(live_server, openai_client):
    def count():
        for line in httpx.get(f"{live_server.url}/metrics").text.splitlines():
            if line.startswith('llmdoctor_requests_total{endpoint="/v1/models",status="200"}'):
                return float(line.split()[-1])
        return 0.0

    before = count()
    openai_client.models.list()
    assert count() == before + 1
