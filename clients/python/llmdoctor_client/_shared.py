"""What the sync and async clients share: settings from arguments or the environment, request
bodies, and SSE parsing. No I/O here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from pydantic import BaseModel

from llmdoctor_client.errors import APIConnectionError, APITimeoutError, error_from_payload
from llmdoctor_client.types import Guidance

BASE_URL_ENV = "LLMDOCTOR_BASE_URL"
API_KEY_ENV = "LLMDOCTOR_API_KEY"  # the server reads the same variable for its --api-key
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Generation can take minutes (the server's own --request-timeout defaults to 600 s); connecting cannot.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
USER_AGENT = "llmdoctor-client/0.1.0"

DONE = object()  # the `data: [DONE]` sentinel

Messages = str | Sequence[Mapping[str, Any] | BaseModel]
GuidanceLike = Guidance | Mapping[str, Any] | None


def resolve_base_url(base_url: str | None) -> str:
    """Argument, else $LLMDOCTOR_BASE_URL, else localhost:8000; a trailing `/v1` (as the openai
    client takes it) is dropped, since /health lives at the root."""
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    return url.removesuffix("/v1")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None


def headers(api_key: str | None) -> dict[str, str]:
    out = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def as_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    if timeout is None:
        return DEFAULT_TIMEOUT
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def _message(message: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    return message.model_dump(exclude_none=True) if isinstance(message, BaseModel) else dict(message)


def generation_body(
    model: str | None, guidance: GuidanceLike, stream: bool, sampling: Mapping[str, Any]
) -> dict[str, Any]:
    """Fields both generation endpoints share; None values are left out (the server's defaults apply)."""
    body: dict[str, Any] = {k: v for k, v in sampling.items() if v is not None}
    if model is not None:
        body["model"] = model
    if guidance is not None:
        checked = guidance if isinstance(guidance, Guidance) else Guidance.model_validate(guidance)
        body["guidance"] = checked.model_dump(exclude_none=True)
    if stream:
        body["stream"] = True
    return body


def chat_body(messages: Messages, model, guidance, stream, sampling) -> dict[str, Any]:
    """`messages` may be one string: a single user message."""
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else [_message(m) for m in messages]
    return {"messages": listed, **generation_body(model, guidance, stream, sampling)}


def completion_body(prompt, model, guidance, stream, sampling) -> dict[str, Any]:
    return {"prompt": prompt, **generation_body(model, guidance, stream, sampling)}


def tokenize_body(prompt: str | None, messages: Messages | None, model: str | None,
                  options: Mapping[str, Any]) -> dict[str, Any]:
    """POST /tokenize's body: a prompt, or messages (one string: a single user message); not both."""
    if (prompt is None) == (messages is None):
        raise TypeError("tokenize() takes a prompt or messages=, not both")
    body: dict[str, Any] = {"prompt": prompt} if prompt is not None else {
        "messages": [{"role": "user", "content": messages}] if isinstance(messages, str)
        else [_message(m) for m in messages]}
    if model is not None:
        body["model"] = model
    return {**body, **options}


def parse_sse_line(line: str) -> dict | object | None:
    """The JSON of one `data:` line, DONE for `data: [DONE]`, None for anything else (blank,
    comments, other fields). An error event raises the APIError it carries."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    payload = json.loads(data)
    if isinstance(payload, dict) and "error" in payload:
        raise error_from_payload(payload)
    return payload


def connection_error(exc: httpx.TransportError, request: httpx.Request | None = None) -> APIConnectionError:
    where = f" ({request.method} {request.url})" if request is not None else ""
    if isinstance(exc, httpx.TimeoutException):
        error = APITimeoutError(f"timed out{where}: {type(exc).__name__}")
    else:
        error = APIConnectionError(f"connection failed{where}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
