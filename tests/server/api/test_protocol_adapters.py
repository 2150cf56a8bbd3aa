import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdoctor.server.adapter_folders import AdapterError, validate_adapter_name
from llmdoctor.server.api.protocol_adapters import ADAPTER_NAME_SCHEMA, LoadAdapterRequest


def _schema_accepts(name: str) -> bool:
    """JSON Schema's reading of ADAPTER_NAME_SCHEMA (ECMA-262: `$` is the end of the string, where
    Python's `$` would also match before a final newline)."""
    pattern = ADAPTER_NAME_SCHEMA["pattern"].removeprefix("^").removesuffix("$")
    length_ok = ADAPTER_NAME_SCHEMA["minLength"] <= len(name) <= ADAPTER_NAME_SCHEMA["maxLength"]
    return length_ok and re.fullmatch(pattern, name) is not None


def _server_accepts(name: str) -> bool:
    try:
        validate_adapter_name(name)
    except AdapterError:
        return False
    return True


@pytest.mark.parametrize("name", ["", ".", "...", "..a", "a", "-", "_", "_.", "__", "__x", "_x", ".__x", "a/b",
                                  "a b", "a\n", "é", "a" * 64, "a" * 65, "pirate-v1.2_x"])
def test_adapter_name_schema_agrees_with_validate_adapter_name(name):
    assert _schema_accepts(name) == _server_accepts(name)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="a_.-/\n", max_size=70))
def test_adapter_name_schema_agrees_on_generated_names(name):
    assert _schema_accepts(name) == _server_accepts(name)


def test_load_adapter_request_documents_the_name_rule():
    name = LoadAdapterRequest.model_json_schema()["properties"]["name"]
    assert ADAPTER_NAME_SCHEMA.items() <= name.items()
