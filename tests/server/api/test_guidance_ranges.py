"""The accepted ranges of the rule's weights and the sampling values (README, "Guidance"), on the live server:
what is meaningless is a 400 naming the field; the extremes that are accepted are served."""

import pytest

OUT_OF_RANGE = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": 2**31}, "top_k"),
    ({"seed": 2**64}, "seed"),
    ({"guidance": {"alpha": -1}}, "guidance.alpha"),
    ({"guidance": {"alpha": 100.5}}, "guidance.alpha"),
    ({"guidance": {"alpha": 1e-300}}, "guidance.alpha"),
    ({"guidance": {"alpha": 0}}, "guidance.alpha"),  # no weight on any model: every token equally likely
    ({"guidance": {"alpha": 0, "doctors": {"cheerful": 0}}}, "guidance.alpha"),
    ({"guidance": {"doctors": {"cheerful": 1e30}}}, "guidance.doctors[0].beta"),
    ({"guidance": {"doctors": [{"name": "cheerful", "beta": -1e-9}]}}, "guidance.doctors[0].beta"),
]


@pytest.mark.parametrize("fields, param", OUT_OF_RANGE, ids=[p + "=" + str(f) for f, p in OUT_OF_RANGE])
def test_out_of_range_value_is_400_naming_the_field(live_server, fields, param):
    with live_server.client() as http:
        response = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_chat_out_of_range_beta_is_400_naming_the_field(live_server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
            "guidance": {"doctors": [{"name": "cheerful", "beta": -101}]}}
    with live_server.client() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "guidance.doctors[0].beta"


def test_extreme_accepted_values_are_served(live_server):
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 1e-300, "top_p": 1e-300,
            "top_k": 2**31 - 1, "seed": -(2**63), "logprobs": 5,
            "guidance": {"alpha": 0, "doctors": {"cheerful": -100}}}
    with live_server.client() as http:
        response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_openapi_documents_the_ranges(live_server):
    with live_server.client() as http:
        schemas = http.get("/openapi.json").json()["components"]["schemas"]
    alpha = schemas["GuidanceSchema"]["properties"]["alpha"]
    beta = schemas["DoctorWeightSchema"]["properties"]["beta"]
    temperature = schemas["CompletionRequest"]["properties"]["temperature"]
    assert (alpha["minimum"], alpha["maximum"], beta["minimum"], beta["maximum"]) == (0, 100, -100, 100)
    assert "1e-06" in alpha["description"] and "negative" in beta["description"]
    assert "0.01" in temperature["description"] and temperature["maximum"] == 2
