"""Every way a request can be wrong gets OpenAI error JSON with the right status, on the live server."""

import openai
import pytest


def post(live_server, path, content, headers=None):
    with live_server.client() as http:
        return http.post(path, content=content, headers={"Content-Type": "application/json", **(headers or {})})


def error_of(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    return error


def test_error_malformed_json_is_400(live_server):
    error = error_of(post(live_server, "/v1/completions", '{"prompt": "x", max'), 400)
    assert "malformed JSON" in error["message"]


def test_error_non_json_body_is_400(live_server):
    with live_server.client() as http:
        response = http.post("/v1/completions", content="prompt=x", headers={"Content-Type": "text/plain"})
    assert "JSON object" in error_of(response, 400)["message"]


def test_error_wrong_type_names_the_field_and_expectation(live_server):
    error = error_of(post(live_server, "/v1/completions", '{"prompt": "x", "temperature": "hot"}'), 400)
    assert error["param"] == "temperature" and "valid number" in error["message"]


@pytest.mark.parametrize("max_tokens", [-1, 0])
def test_error_non_positive_max_tokens_is_400(live_server, max_tokens):
    body = f'{{"prompt": "x", "max_tokens": {max_tokens}}}'
    assert error_of(post(live_server, "/v1/completions", body), 400)["param"] == "max_tokens"


def test_error_oversized_max_tokens_is_context_overflow(openai_client):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.completions.create(model=None, prompt="x", max_tokens=10**6)
    assert "maximum context length is 2048 tokens" in err.value.message


def test_error_unknown_model_is_404_listing_known_ones(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert "SmolLM2-135M-Instruct" in err.value.message and "pirate" in err.value.message


def test_error_doctor_as_model_is_400(openai_client):
    with pytest.raises(openai.BadRequestError, match="is a doctor"):
        openai_client.completions.create(model="cheerful", prompt="x", max_tokens=1)


def test_error_unknown_doctor_is_404_listing_loaded_ones(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.completions.create(model=None, prompt="x", max_tokens=1,
                                         extra_body={"guidance": {"doctors": [{"name": "grumpy", "beta": 1}]}})
    assert "cheerful" in err.value.message and err.value.body["param"] == "guidance.doctors[0].name"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_error_non_finite_beta_is_400_naming_the_field(live_server, literal):
    body = f'{{"prompt": "x", "guidance": {{"doctors": [{{"name": "cheerful", "beta": {literal}}}]}}}}'
    error = error_of(post(live_server, "/v1/completions", body), 400)
    assert error["param"] == "guidance.doctors[0].beta" and "finite" in error["message"]


def test_error_unknown_field_is_400_naming_it(live_server):
    error = error_of(post(live_server, "/v1/completions", '{"prompt": "x", "max_token": 3}'), 400)
    assert error["param"] == "max_token"


def test_error_unknown_route_is_404_json(live_server):
    with live_server.client() as http:
        error_of(http.get("/v1/engines"), 404)


def test_error_wrong_method_is_405_json_with_allow(live_server):
    with live_server.client() as http:
        response = http.get("/v1/completions")
    assert "POST" in error_of(response, 405)["message"] and response.headers["allow"] == "POST"
