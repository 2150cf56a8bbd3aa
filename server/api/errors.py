"""Every error the HTTP API returns, mapped to status + OpenAI error JSON in this one place.

Shape (OpenAI's, also vLLM's): `{"error": {"message", "type", "param", "code"}}`, `code` = the HTTP status.
FastAPI answers validation errors with 422 by default; OpenAI and vLLM use 400, so do we.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmdoctor.server.api.disconnect import ClientDisconnected
from llmdoctor.server.errors import LLMDoctorError, QueueFullError

logger = logging.getLogger(__name__)


class AuthenticationError(LLMDoctorError):
    """Missing or wrong API key (HTTP 401)."""

    status = 401
    type = "authentication_error"


class RequestTimeoutError(LLMDoctorError):
    """The request ran past --request-timeout and was aborted (HTTP 504)."""

    status = 504
    type = "timeout_error"


class RequestTooLargeError(LLMDoctorError):
    """The body is larger than --max-request-bytes (HTTP 413)."""

    status = 413
    type = "invalid_request_error"


class ErrorInfo(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, not_found_error, server_overloaded ...")
    param: str | None = Field(None, description="the request field at fault, e.g. guidance.doctors[0].name")
    code: int = Field(description="the HTTP status (mid-stream too, where no status line tells it)")


class ErrorResponse(BaseModel):
    """Every error answer's body, and the JSON of an error event mid-stream."""

    error: ErrorInfo


_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


def error_payload(message: str, err_type: str, status: int, param: str | None = None) -> dict:
    """An ErrorResponse as JSON-ready dict."""
    return ErrorResponse(error=ErrorInfo(message=message, type=err_type, param=param, code=status)).model_dump()


def payload_for(exc: BaseException) -> tuple[int, dict]:
    """(status, body) for any exception; unknown ones become a 500 that leaks nothing."""
    if isinstance(exc, LLMDoctorError):
        return exc.status, error_payload(exc.message, exc.type, exc.status, exc.param)
    return 500, error_payload("internal server error; see the server log", "internal_error", 500)


def error_response(exc: BaseException) -> JSONResponse:
    status, body = payload_for(exc)
    headers = {}
    if isinstance(exc, QueueFullError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(body, status_code=status, headers=headers)


def param_path(loc: tuple) -> str | None:
    """('body', 'guidance', 'doctors', 0, 'beta') -> 'guidance.doctors[0].beta'."""
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def describe_validation_error(error: dict) -> tuple[str, str | None]:
    """(message, param) for the first pydantic error, saying what was expected."""
    param = param_path(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return f"malformed JSON body: {detail} (at character {error['loc'][-1]})", None
    if param is None and kind == "missing":
        return "the request body is required: a JSON object", None
    if param is None and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object (send Content-Type: application/json)", None
    if kind == "extra_forbidden":
        return f"unrecognized request argument supplied: {param}", param
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if "input" in error and kind != "missing":
        message += f" (got {_short_repr(error['input'])})"
    return (f"{param}: {message}" if param else message), param


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _on_llmdoctor_error(request: Request, exc: LLMDoctorError) -> JSONResponse:
    return error_response(exc)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    message, param = describe_validation_error(errors[0]) if errors else ("invalid request", None)
    return JSONResponse(error_payload(message, "invalid_request_error", 400, param), status_code=400)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    err_type = _HTTP_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "internal_error")
    message = str(exc.detail)
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's "error parsing the body" on raw non-UTF-8 bytes
        bad = exc.__cause__
        message = f"the request body is not valid UTF-8 (byte 0x{bad.object[bad.start]:02x} at offset {bad.start})"
    elif exc.status_code == 404 and message == "Not Found":  # the router's, not a route's own 404
        message = f"no route {request.method} {request.url.path}; see GET /docs for the API"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    return JSONResponse(
        error_payload(message, err_type, exc.status_code), status_code=exc.status_code, headers=exc.headers
    )


async def _on_client_disconnected(request: Request, exc: ClientDisconnected) -> Response:
    # Nobody is listening; 499 (nginx's "client closed request") only shows up in logs and metrics.
    return Response(status_code=499)


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LLMDoctorError, _on_llmdoctor_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnected, _on_client_disconnected)
    app.add_exception_handler(Exception, _on_unexpected_error)
