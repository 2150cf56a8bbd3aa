"""The API key guards every /v1 route (and, with --auth-all-routes, every route but /health)."""

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


@pytest.mark.parametrize("value", ["bearer test-key", "BEARER test-key", "BeArEr test-key", "Bearer   test-key"])
def test_auth_bearer_scheme_is_case_insensitive_and_allows_extra_spaces(live_server, value):
    response = httpx.get(f"{live_server.url}/v1/models", headers={"Authorization": value})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", ["Bearer", "Basic test-key", "Bearertest-key", "Bearer test-key x",
                                   "Bearer TEST-KEY"])
def test_auth_other_schemes_or_tokens_are_401(live_server, value):
    response = httpx.get(f"{live_server.url}/v1/models", headers={"Authorization": value})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_auth_docs_stay_open_by_default(live_server, path):
    assert httpx.get(f"{live_server.url}{path}").status_code == 200


# ---- --auth-all-routes: a server of its own ------------------------------------------------------

KEY = "all-routes-key"


@pytest.fixture(scope="module")
def all_routes_server(tmp_path_factory):
    from tests.live_server import start_server

    server = start_server(["--auth-all-routes"], tmp_path_factory.mktemp("auth_all") / "server.log", api_key=KEY)
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/redoc", "/openapi.json", "/v1/models", "/no-such-route"])
def test_auth_all_routes_refuses_keyless_requests(all_routes_server, path):
    response = httpx.get(f"{all_routes_server.url}{path}")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/redoc", "/openapi.json", "/v1/models"])
def test_auth_all_routes_serves_requests_with_the_key(all_routes_server, path):
    response = httpx.get(f"{all_routes_server.url}{path}", headers={"Authorization": f"bearer {KEY}"})
    assert response.status_code == 200


def test_auth_all_routes_leaves_health_open(all_routes_server):
    assert httpx.get(f"{all_routes_server.url}/health").status_code == 200
