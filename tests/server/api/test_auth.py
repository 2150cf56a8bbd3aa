"""The API key guards every /v1 route and nothing else (the live server runs with --api-key)."""

import httpx
import openai
import pytest


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key"}])
def test_auth_missing_or_wrong_key_is_401(live_server, headers):
    response = httpx.get(f"{live_server.url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_auth_is_checked_before_the_body_is_parsed(live_server):
    response = httpx.post(f"{live_server.url}/v1/completions", content="{not json")
    assert response.status_code == 401


def test_auth_openai_client_with_wrong_key_gets_authentication_error(live_server):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_auth_health_and_metrics_stay_open(live_server, path):
    assert httpx.get(f"{live_server.url}{path}").status_code == 200
