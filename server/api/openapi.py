"""The OpenAPI document (GET /openapi.json, /docs): FastAPI's, plus what it cannot infer from our routes.

- Streams: with `stream: true` a generation route answers `text/event-stream`, one `data: <chunk JSON>`
  event per chunk, then `data: [DONE]`. A route declares it with `responses=event_stream(Chunk)`. The
  media type's schema describes one SSE event, `{"data": ...}` (as OpenAPI 3.2 and schemathesis read
  it), whose `data` is `[DONE]` or the chunk's JSON (`contentMediaType` + `contentSchema`, JSON Schema
  2020-12). FastAPI writes that schema as given but adds to `components` only the models it saw as a
  `response_model` or `responses[...]["model"]`, so the chunk's schemas travel as `$defs` and
  `install_openapi()` moves them into `components` (where the SDK's codegen finds the chunk types).
- Auth: with --api-key, `bearerAuth` (an http bearer `securitySchemes`) is required on the operations
  the key protects (server/api/auth.py); without a key the document declares no security, as the
  server asks for none.
- Errors: `error_responses(...)` declares ErrorResponse for the statuses a route really returns, plus
  `default` (500 ...). A route with a `default` gets no FastAPI 422: request validation answers 400.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from llmdoctor.server.api.errors import ErrorResponse

REF_TEMPLATE = "#/components/schemas/{model}"
STREAM_END = "[DONE]"
SECURITY_SCHEME = "bearerAuth"

ERROR_DESCRIPTIONS = {
    400: "Invalid request (a request validation error, text that is not valid Unicode, n beyond what the server "
    "can ever hold); `error.param` names the field",
    401: "Missing or wrong API key (only when the server runs with --api-key; on every route but /health with "
    "--auth-all-routes)",
    403: "The adapter path is outside every --adapter-root",
    404: "Unknown model, doctor, adapter or path",
    409: "The adapter name is already in use",
    413: "The request body is larger than --max-request-bytes",
    503: "The queue is full (with Retry-After), the server is shutting down, or its engine is not running",
    504: "The request ran past --request-timeout and was aborted",
    "default": "Any other error, e.g. 500 (an internal error; the details are in the server log)",
}


def error_responses(*statuses: int, described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries: ErrorResponse for each status and `default`; `described` overrides the
    generic ERROR_DESCRIPTIONS where a route knows better."""
    descriptions = {**ERROR_DESCRIPTIONS, **(described or {})}
    return {status: {"model": ErrorResponse, "description": descriptions[status]} for status in (*statuses, "default")}


def json_text(schema: dict[str, Any]) -> dict[str, Any]:
    """A string holding JSON valid against `schema` (JSON Schema 2020-12 content keywords)."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def event_stream(chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entry for a route that, with `stream: true`, answers SSE `data:` events of `chunk`."""
    refs, definitions = models_json_schema([(chunk, "serialization")], ref_template=REF_TEMPLATE)
    error_ref = {"$ref": REF_TEMPLATE.format(model=ErrorResponse.__name__)}
    data = [{"const": STREAM_END}, *(json_text(schema) for schema in (refs[chunk, "serialization"], error_ref))]
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"anyOf": data}},
        "$defs": definitions["$defs"],  # see install_openapi
    }
    description = (
        f"The result; with `stream: true`, `text/event-stream` of `data: {chunk.__name__}` events, then "
        f"`data: {STREAM_END}` (an error mid-stream is a last `data: ErrorResponse` event)"
    )
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}


def move_stream_defs(document: dict[str, Any]) -> dict[str, Any]:
    """Move the stream chunks' `$defs` into `components` (in place; idempotent) and return `document`."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for path in document["paths"].values():
        for operation in path.values():
            stream = operation["responses"].get("200", {}).get("content", {}).get("text/event-stream", {})
            for name, schema in stream.get("schema", {}).pop("$defs", {}).items():
                assert schemas.setdefault(name, schema) == schema, f"two different schemas named {name}"
    return document


def declare_bearer_auth(document: dict[str, Any], protected: Callable[[str], bool]) -> dict[str, Any]:
    """Require `bearerAuth` on the operations whose path is `protected` (in place; idempotent), each
    declaring its 401, and return `document`."""
    document.setdefault("components", {}).setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's --api-key, as `Authorization: Bearer <key>`",
    }
    unauthorized = {
        "description": ERROR_DESCRIPTIONS[401],
        "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=ErrorResponse.__name__)}}},
    }
    for path, operations in document["paths"].items():
        if protected(path):
            for operation in operations.values():
                operation["security"] = [{SECURITY_SCHEME: []}]
                operation["responses"].setdefault("401", unauthorized)
    return document


def install_openapi(app: FastAPI, protected: Callable[[str], bool] | None = None) -> None:
    """Extend FastAPI's (cached) document, FastAPI's documented way: by replacing `app.openapi`.
    `protected`: with an API key, whether it guards a path (server/api/auth.py); None = no key."""
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        document = move_stream_defs(fastapi_openapi())
        return document if protected is None else declare_bearer_auth(document, protected)

    app.openapi = openapi
