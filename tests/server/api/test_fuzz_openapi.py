"""Fuzz the HTTP API from its own OpenAPI document (schemathesis), on a live server with the embedded model.

Every operation in GET /openapi.json gets generated requests, schema-valid ("positive") and, where the
operation has inputs that can be invalid, schema-invalid ("negative"); each answer must be no 5xx, a
status the document declares, the declared content type, a body matching the declared schema (SSE
streams too: every `data:` chunk against the chunk schema, ending in `[DONE]` or an error event), and
an invalid request must get a 4xx. Found problems stay below as plain requests (`test_regression_*`).

Bounded and repeatable for CI: `derandomize=True` (the examples come from a fixed seed, no example
database), FUZZ_EXAMPLES examples per operation and mode, no shrinking (a failure prints a curl line
to reproduce). Generated requests are kept cheap by `cap_generation_cost`: the schema puts no upper
bound on `max_tokens` (the context length is the bound), and chat's default is "the rest of the
context", so a generated request could decode ~2000 tokens (minutes on 2 CPU cores); the cap keeps
every schema-valid value schema-valid (and every invalid one invalid) while bounding the work.
Run alone: `.venv/bin/python -m pytest tests/server/api/test_fuzz_openapi.py` (~3 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import re

import httpx
import jsonschema
import pytest
import schemathesis  # the `test` extra (deploy/install.sh --test): missing, the suite fails, it never skips
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.live_server import LiveServer, start_server

API_KEY = "fuzz-key"
FUZZ_EXAMPLES = int(os.environ.get("LLMDOCTOR_FUZZ_EXAMPLES", "15"))  # per operation and mode
MAX_TOKENS_CAP = 4
N_CAP = 2
MAX_PROMPTS = 4  # prompts in one completions request (positive mode; each prompt x n is a decode row)
REQUEST_TIMEOUT = 60.0  # seconds; a generated request still running then counts as a hang

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Every operation of the document, with the modes fuzzed (test_fuzz_covers_every_operation keeps this
# list equal to the document). Negative mode is left out only where the schema allows no invalid
# request: no parameters and no body (schemathesis raises Unsatisfiable), or a path parameter that
# is any string.
OPERATIONS = {
    ("POST", "/v1/completions"): (POSITIVE, NEGATIVE),
    ("POST", "/v1/chat/completions"): (POSITIVE, NEGATIVE),
    ("POST", "/v1/adapters"): (POSITIVE, NEGATIVE),
    ("GET", "/v1/adapters"): (POSITIVE,),  # no inputs
    ("DELETE", "/v1/adapters/{name}"): (POSITIVE,),  # `name` is any string
    ("GET", "/v1/models"): (POSITIVE,),  # no inputs
    ("POST", "/tokenize"): (POSITIVE, NEGATIVE),
    ("POST", "/detokenize"): (POSITIVE, NEGATIVE),
    ("GET", "/health"): (POSITIVE,),  # no inputs
    ("GET", "/metrics"): (POSITIVE,),  # no inputs
}


# ---- the server under fuzz ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, doctor_adapter_dir, patient_adapter_dir) -> LiveServer:
    """Its own server (generated DELETEs and loads must not touch the shared one), whose
    --adapter-root is an empty temp folder: a generated adapter path can load nothing real."""
    root = tmp_path_factory.mktemp("fuzz_adapter_root")
    args = [
        "--max-batch", "8",
        "--adapter-root", str(root),
        "--doctor", f"cheerful={doctor_adapter_dir}",
        "--lora", f"pirate={patient_adapter_dir}",
    ]
    server = start_server(args, tmp_path_factory.mktemp("fuzz") / "server.log", api_key=API_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def openapi_document(fuzz_server) -> dict:
    return httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).raise_for_status().json()


@pytest.fixture(scope="module")
def api_schema(fuzz_server, openapi_document):
    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {API_KEY}"},
        # Off, with reason: the server accepts some OpenAI fields only at their neutral value and has
        # cross-field rules that JSON Schema cannot state (see `neutralise`), so a schema-valid request
        # may rightly get 400. Single-field rules the document should state are regression tests below.
        "checks": {"positive_data_acceptance": {"enabled": False}},
        # The key is a throwaway; unsanitized, a failure's curl line keeps fields such as max_tokens.
        "output": {"sanitization": {"enabled": False}},
    })
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)
    models = httpx.get(f"{fuzz_server.url}/v1/models", headers=fuzz_server.headers, timeout=30).json()
    known = KnownNames(
        models=[card["id"] for card in models["data"] if card.get("kind", "patient") != "doctor"],
        doctors=["cheerful"],
    )
    schema.hook("map_body")(cap_generation_cost)
    # A plain function: schemathesis sets attributes on a hook, which a bound method refuses.
    schema.hook("flatmap_body")(lambda context, body: known.swap_strategy(body))
    return schema


# ---- hooks: cheap requests, and names the server knows ------------------------------------------


def cap_generation_cost(context, body):
    """map_body: bound the decode work of one generated request (see the module docstring).

    Only integers already in the valid range are lowered, to values still in it; an invalid value
    (negative mode) is left as generated, so the case stays invalid.
    """
    if not isinstance(body, dict):
        return body
    for field, cap in (("max_tokens", MAX_TOKENS_CAP), ("max_completion_tokens", MAX_TOKENS_CAP), ("n", N_CAP)):
        value = body.get(field)
        if _is_integral(value) and value > cap and (field != "n" or value <= 64):
            if field == "n" and body.get("best_of") == value:
                body["best_of"] = cap  # best_of must equal n
            body[field] = cap
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS_CAP  # chat's default (absent or null): the rest of the context
    if "prompt" in body and "max_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS_CAP  # completions' default: 16
    return body


def _is_integral(value) -> bool:
    """An int, or a float such as 200.0: JSON Schema's "integer" allows both, and so does the server."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


NEUTRAL_DROPS = ("echo", "suffix", "best_of")
VOCAB = 49152  # the embedded model's vocabulary (FACTS.md); the document states no bound on token ids


def neutralise(case):
    """Drop what a schema-valid request may carry that the server rightly refuses, so that half of the
    positive cases reach the decoder instead of a 400: fields served only at their neutral value
    (echo, suffix, best_of other than n), cross-field rules JSON Schema does not state (stream_options
    needs stream, top_logprobs needs logprobs, continue_final_message needs add_generation_prompt false,
    min_tokens <= max_tokens), and what the document does not bound yet (empty prompts, token ids
    outside the vocabulary: see test_regression_document_states_single_field_rule). Positive mode
    only: in negative mode this could make a case valid."""
    body = case.body
    if isinstance(body, dict) and ("prompt" in body or "messages" in body):
        if isinstance(body.get("prompt"), list):
            prompts = [[abs(int(t)) % VOCAB for t in p] or [1] if isinstance(p, list) else p for p in body["prompt"]]
            body["prompt"] = prompts[:MAX_PROMPTS] or ["Hello"]
        if isinstance(body.get("stop_token_ids"), list):
            body["stop_token_ids"] = [abs(int(t)) % VOCAB for t in body["stop_token_ids"]]
        if isinstance(body.get("logit_bias"), dict):
            # keys the document's pattern refuses are the generator's slip (it may not apply propertyNames): dropped
            body["logit_bias"] = {str(int(k) % VOCAB): v for k, v in body["logit_bias"].items()
                                  if re.fullmatch(r"[0-9]{1,10}", k)}
        asked = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if isinstance(body.get("min_tokens"), int) and not (isinstance(asked, int) and body["min_tokens"] <= asked):
            body.pop("min_tokens")
        for key in NEUTRAL_DROPS:
            body.pop(key, None)
        if not body.get("stream"):
            body.pop("stream_options", None)
        if not body.get("logprobs"):
            body.pop("top_logprobs", None)
        if body.get("add_generation_prompt", True):
            body.pop("continue_final_message", None)
    return case


class KnownNames:
    """For flatmap_body: sometimes swap a generated model or doctor name for one the server serves, so the
    fuzz reaches the decode paths (patient adapter, guidance) and not only the 404 for an unknown name.
    A name is swapped only when it is a non-empty string, so validity does not change."""

    def __init__(self, models: list[str], doctors: list[str]):
        self.models, self.doctors = models, doctors

    def swap_strategy(self, body):
        if not isinstance(body, dict):
            return st.just(body)
        return st.tuples(st.sampled_from([None, *self.models]), st.booleans()).map(
            lambda choice: self._swap(body, *choice)
        )

    def _swap(self, body: dict, model: str | None, doctor: bool) -> dict:
        body = dict(body)
        if model is not None and isinstance(body.get("model"), str):
            body["model"] = model
        guidance = body.get("guidance")
        if doctor and isinstance(guidance, dict) and isinstance(guidance.get("doctors"), list):
            doctors = [dict(d) if isinstance(d, dict) else d for d in guidance["doctors"]]
            for d in doctors[:1]:
                if isinstance(d, dict) and isinstance(d.get("name"), str) and d["name"]:
                    d["name"] = self.doctors[0]
            body["guidance"] = {**guidance, "doctors": doctors}
        return body


# ---- an extra check: SSE streams against the declared chunk schema --------------------------------


def stream_conformance(document: dict):
    """A schemathesis check: a `text/event-stream` answer is `data: <chunk>` events, each valid against
    the operation's declared chunk schema (or an ErrorResponse mid-stream), ending with `data: [DONE]`
    or an error event. (schemathesis checks each event against the media type's schema, which describes
    one SSE event `{data}`: it does not read the JSON inside `data`, nor know about `[DONE]`.)"""

    def sse_data_conformance(ctx, response, case):
        if "text/event-stream" not in response.headers.get("content-type", [""])[0]:
            return None
        operation = document["paths"][case.operation.path][case.method.lower()]
        declared = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
        chunk_validator = _validator(document, _chunk_schema(declared))
        error_validator = _validator(document, {"$ref": "#/components/schemas/ErrorResponse"})
        lines = re.split(r"\r\n|\r|\n", response.text)  # SSE's line ends only (not str.splitlines's)
        events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        assert events, f"stream with no data events: {response.text[:200]!r}"
        for event in events[:-1]:
            payload = json.loads(event)
            if "error" in payload:
                error_validator.validate(payload)
                raise AssertionError(f"error event before the end of the stream: {event}")
            chunk_validator.validate(payload)
        last = events[-1]
        if response.stream_cut_short:  # schemathesis reads at most 20 events, then closes the connection
            chunk_validator.validate(json.loads(last))
        elif last != "[DONE]":
            payload = json.loads(last)
            assert "error" in payload, f"stream ended without [DONE] or an error event: {last[:200]}"
            error_validator.validate(payload)
        return True

    return sse_data_conformance


def _chunk_schema(declared: dict) -> dict:
    """The chunk schema: the declared one, or, once the document describes the SSE event itself, the
    `contentSchema` of its JSON `data`."""
    return _find_content_schema(declared) or declared


def _find_content_schema(node) -> dict | None:
    if isinstance(node, dict) and "contentSchema" in node:
        return node["contentSchema"]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return next((found for child in children if (found := _find_content_schema(child)) is not None), None)


def _validator(document: dict, schema: dict) -> jsonschema.protocols.Validator:
    wrapped = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(wrapped)


# ---- the fuzz tests -------------------------------------------------------------------------------


def test_fuzz_covers_every_operation(openapi_document):
    operations = {(method.upper(), path) for path, ops in openapi_document["paths"].items() for method in ops}
    assert operations == set(OPERATIONS)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(method, path, mode) for (method, path), modes in OPERATIONS.items() for mode in modes],
    ids=lambda value: value.value if isinstance(value, GenerationMode) else value,
)
def test_fuzz_operation(api_schema, openapi_document, fuzz_server, method, path, mode):
    operation = api_schema[path][method]
    check_stream = stream_conformance(openapi_document)
    failures: dict[str, str] = {}  # distinct failure title -> first report

    strategy = operation.as_strategy(generation_mode=mode)
    if mode is POSITIVE:
        strategy = st.tuples(strategy, st.booleans()).map(lambda drawn: neutralise(drawn[0]) if drawn[1] else drawn[0])

    @given(case=strategy)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time; the report has a curl line
        suppress_health_check=list(HealthCheck),  # each example is an HTTP round trip to a model
    )
    def fuzz(case):
        try:
            case.call_and_validate(base_url=fuzz_server.url, timeout=REQUEST_TIMEOUT, additional_checks=[check_stream])
        except BaseExceptionGroup as group:  # schemathesis's FailureGroup: one per failed check
            for failure in group.exceptions:
                failures.setdefault(_failure_title(failure), f"{failure}\n\n{group}")
        except Exception as exc:  # noqa: BLE001 - a timeout, a dropped connection ...: collected, reported below
            failures.setdefault(_failure_title(exc), f"{type(exc).__name__}: {exc}\n{_curl(case)}")

    fuzz()
    assert not failures, f"{len(failures)} distinct failure(s):\n\n" + "\n\n".join(failures.values())


def _failure_title(exc: BaseException) -> str:
    """A key that groups repeats of one problem: the exception type and its title or first line."""
    title = getattr(exc, "title", None) or (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {title}"


def _curl(case) -> str:
    try:
        return case.as_curl_command({"Authorization": f"Bearer {API_KEY}"})
    except Exception:  # noqa: BLE001 - only a hint for the report
        return repr(case.body)[:2000]


# ---- regression tests: what the fuzz found, as plain requests --------------------------------------


def _post(server: LiveServer, path: str, body) -> httpx.Response:
    with server.client(timeout=REQUEST_TIMEOUT) as client:
        return client.post(path, json=body)


def _assert_openai_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["code"] == status


def _request_schema(document: dict, path: str) -> jsonschema.protocols.Validator:
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return _validator(document, body)


# Request shapes the server serves (OpenAI's, or documented in DESIGN.md / the schemas' docstrings)
# that the document declared invalid: a client generated from the document cannot send them, and a
# negative-mode fuzz case of that shape is "invalid data accepted".
SERVED_SHAPES = {
    "prompt string": ("/v1/completions", {"prompt": "Hello", "max_tokens": 2}),
    "prompt token ids": ("/v1/completions", {"prompt": [9707, 28], "max_tokens": 2}),
    "stop string": ("/v1/completions", {"prompt": ["Hello"], "max_tokens": 2, "stop": "\n"}),
    "stop null": ("/v1/completions", {"prompt": ["Hello"], "max_tokens": 2, "stop": None}),
    "content parts": ("/v1/chat/completions", {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 2}),
    "doctors mapping": ("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "guidance": {"doctors": {"cheerful": 0.5}}}),
}


@pytest.mark.parametrize("shape", list(SERVED_SHAPES))
def test_regression_document_declares_served_request_shape(fuzz_server, openapi_document, shape):
    """Found by reading the fuzz's negative cases: e.g. `"prompt": "Hello"` is served (200) but the
    document's CompletionRequest.prompt allows only arrays (the pydantic field is typed after its
    `mode="before"` normalisation: server/api/protocol_completions.py CompletionRequest.prompt,
    protocol_common.py SamplingFields.stop, GuidanceSchema.doctors, protocol_chat.py ChatMessage.content)."""
    path, body = SERVED_SHAPES[shape]
    response = _post(fuzz_server, path, body)
    assert response.status_code == 200, response.text
    errors = [e.message for e in _request_schema(openapi_document, path).iter_errors(body)]
    assert not errors, f"served, but invalid by the document: {errors}"


# Requests the document declares valid that the server refuses for a rule of one field, which the
# document can state (minItems, minLength/maxLength/pattern): found by schemathesis's
# positive_data_acceptance check (ST202).
REFUSED_SHAPES = {
    "empty prompt list": ("/v1/completions", {"prompt": []}, "prompt"),
    "empty adapter name": ("/v1/adapters", {"kind": "doctor", "name": "", "path": "0"}, "name"),
    "adapter name with a slash": ("/v1/adapters", {"kind": "doctor", "name": "a/b", "path": "0"}, "name"),
}


@pytest.mark.parametrize("shape", list(REFUSED_SHAPES))
def test_regression_document_states_single_field_rule(fuzz_server, openapi_document, shape):
    """The server's 400 is right; the document should say so (protocol_completions.py prompt: no
    min length; protocol_adapters.py LoadAdapterRequest.name: the rule is only in its description)."""
    path, body, param = REFUSED_SHAPES[shape]
    response = _post(fuzz_server, path, body)
    _assert_openai_error(response, 400)
    assert response.json()["error"]["param"] == param
    errors = list(_request_schema(openapi_document, path).iter_errors(body))
    assert errors, f"refused with 400, but valid by the document: {body}"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_regression_event_stream_schema_describes_events(fuzz_server, api_schema, path):
    """Found by the fuzz (ST108 "SSE event violates schema" on every stream): the document declares the
    chunk object as the `text/event-stream` schema (server/api/openapi.py event_stream). OpenAPI 3.2
    and schemathesis read a `text/event-stream` schema as one *event* ({event, data, id, retry}); the
    chunk is the JSON inside `data` (`contentMediaType: application/json` + `contentSchema`, with
    `[DONE]` as the last data). A real stream, validated by schemathesis, must conform."""
    body = {"max_tokens": 3, "stream": True, "temperature": 0.0}
    body |= {"prompt": "Hello"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    case = api_schema[path]["POST"].Case(body=body, media_type="application/json")
    case.call_and_validate(base_url=fuzz_server.url, headers=fuzz_server.headers, timeout=REQUEST_TIMEOUT)


@pytest.mark.parametrize("path", ["a" * 256, "x/" + "b" * 300, "/" + "c" * 256])
def test_regression_adapter_path_too_long_is_4xx(fuzz_server, path):
    """Found by probing the adapter path: a path component over 255 bytes gave 500 (OSError ENAMETOOLONG
    from `real.exists()` in server/adapter_folders.py resolve_adapter_path; Python 3.11's
    Path.exists only swallows ENOENT/ENOTDIR/EBADF/ELOOP). It is the caller's mistake: 400 or 404."""
    response = _post(fuzz_server, "/v1/adapters", {"name": "x", "path": path, "kind": "doctor"})
    assert response.status_code in (400, 403, 404), response.text
    _assert_openai_error(response, response.status_code)
