"""Guidance modes on the live server (README "Guidance"): a `ratio` doctor adds beta * (log p_doctor -
log p_patient), its tilt away from the patient, instead of beta * log p_doctor (`product`)."""

PROMPT = {"prompt": "Tell me about your day.", "max_tokens": 12, "temperature": 0}


def _tokens(http, guidance: dict) -> list[str]:
    response = http.post("/v1/completions", json={**PROMPT, "logprobs": 0, "guidance": guidance})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["logprobs"]["tokens"]


def test_ratio_at_beta_1_is_the_doctor_alone(live_server):
    """log p_patient + 1 * (log p_doctor - log p_patient) = log p_doctor: the same greedy tokens as
    alpha 0 with the doctor at beta 1 in product mode."""
    with live_server.client() as http:
        ratio = _tokens(http, {"doctors": [{"name": "cheerful", "beta": 1.0, "mode": "ratio"}]})
        alone = _tokens(http, {"alpha": 0, "doctors": [{"name": "cheerful", "beta": 1.0}]})
        patient = _tokens(http, {})
    assert ratio == alone and ratio != patient


def test_product_is_the_default_mode(live_server):
    with live_server.client() as http:
        default = _tokens(http, {"doctors": [{"name": "cheerful", "beta": 2.0}]})
        product = _tokens(http, {"doctors": [{"name": "cheerful", "beta": 2.0, "mode": "product"}]})
    assert default == product


def test_ratio_logprobs_are_the_tilted_distribution(live_server):
    """The reported log-prob of each token is the rule's: product and ratio give different numbers."""
    body = {**PROMPT, "max_tokens": 4, "logprobs": 0}
    with live_server.client() as http:
        values = []
        for mode in ("product", "ratio"):
            guidance = {"doctors": [{"name": "cheerful", "beta": 2.0, "mode": mode}]}
            response = http.post("/v1/completions", json={**body, "guidance": guidance})
            assert response.status_code == 200, response.text
            values.append(response.json()["choices"][0]["logprobs"]["token_logprobs"])
    assert values[0] != values[1]


def test_unknown_mode_is_400_naming_the_field(live_server):
    with live_server.client() as http:
        response = http.post("/v1/completions", json={
            **PROMPT, "guidance": {"doctors": [{"name": "cheerful", "beta": 1, "mode": "sharpen"}]}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "guidance.doctors[0].mode" and "ratio" in error["message"]


def test_ratio_with_a_patient_adapter_is_400_and_the_server_stays_up(live_server):
    """The doctor's tilt is measured against the bare patient it was trained on; with a patient
    adapter the engine would need another row for it, so the request is refused, naming the field."""
    with live_server.client() as http:
        response = http.post("/v1/completions", json={
            **PROMPT, "model": "pirate", "guidance": {"doctors": [{"name": "cheerful", "beta": 1, "mode": "ratio"}]}})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "guidance.doctors[0].mode" and "pirate" in error["message"]
        with_product = http.post("/v1/completions", json={
            **PROMPT, "model": "pirate", "guidance": {"doctors": [{"name": "cheerful", "beta": 1}]}})
        assert with_product.status_code == 200, with_product.text
