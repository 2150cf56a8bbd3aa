import json

from llmdoctor.server.api.errors import (
    RequestTimeoutError,
    describe_validation_error,
    error_response,
    param_path,
    payload_for,
)
from llmdoctor.server.errors import ContextOverflowError, NotFoundError, QueueFullError


def test_param_path_formats_nested_fields_and_indexes():
    assert param_path(("body", "guidance", "doctors", 0, "beta")) == "guidance.doctors[0].beta"


def test_param_path_of_the_whole_body_is_none():
    assert param_path(("body",)) is None


def test_validation_error_message_names_field_and_expectation():
    error = {"type": "int_parsing", "loc": ("body", "max_tokens"), "msg": "Input should be a valid integer",
             "input": "ten"}
    message, param = describe_validation_error(error)
    assert param == "max_tokens"
    assert message == "max_tokens: Input should be a valid integer (got 'ten')"


def test_validation_error_for_malformed_json_says_where():
    error = {"type": "json_invalid", "loc": ("body", 12), "msg": "JSON decode error",
             "ctx": {"error": "Expecting value"}}
    message, param = describe_validation_error(error)
    assert param is None and "malformed JSON" in message and "12" in message


def test_validation_error_for_unknown_field_names_it():
    error = {"type": "extra_forbidden", "loc": ("body", "max_token"), "msg": "Extra inputs are not permitted",
             "input": 3}
    assert describe_validation_error(error) == ("unrecognized request argument supplied: max_token", "max_token")


def test_payload_for_typed_error_uses_its_status_type_and_param():
    status, body = payload_for(NotFoundError("no such model", "model"))
    assert status == 404
    assert body == {"error": {"message": "no such model", "type": "not_found_error", "param": "model", "code": 404}}


def test_payload_for_context_overflow_is_400():
    assert payload_for(ContextOverflowError("too long", "max_tokens"))[0] == 400


def test_payload_for_timeout_is_504():
    assert payload_for(RequestTimeoutError("slow"))[0] == 504


def test_payload_for_unexpected_error_leaks_nothing():
    status, body = payload_for(RuntimeError("secret /etc/path in traceback"))
    assert status == 500 and "secret" not in json.dumps(body)


def test_error_response_for_queue_full_sets_retry_after():
    response = error_response(QueueFullError("full", retry_after=2.5))
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
