"""One exception hierarchy for everything a call can raise.

The server answers errors as OpenAI error JSON, `{"error": {"message", "type", "param", "code"}}`
(also as a `data:` event mid-stream); `APIError` carries those fields, and the HTTP status picks
the subclass. Failures before any answer (refused connection, client-side timeout) are
`APIConnectionError`s, with `status` None.
"""

from __future__ import annotations

from datetime import UTC

import httpx


class APIError(Exception):
    """An error answer from the server. `body` is its JSON as sent (None when it sent no JSON)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: int | str | None = None,
        body: dict | None = None,
        headers: httpx.Headers | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.body = body
        self.headers = headers if headers is not None else httpx.Headers()

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status} {self.type}: {self.message}{where}" if self.status else self.message


class BadRequestError(APIError):
    """400: the request is invalid; `param` names the field."""


class AuthenticationError(APIError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIError):
    """403: e.g. an adapter path outside every --adapter-root."""


class NotFoundError(APIError):
    """404: unknown model, doctor, adapter or route."""


class ConflictError(APIError):
    """409: e.g. an adapter name already loaded."""


class RateLimitError(APIError):
    """429: too many requests (retried)."""


class InternalServerError(APIError):
    """5xx without a more specific class."""


class OverloadedError(InternalServerError):
    """503: the server's queue is full or it is shutting down (retried, honouring Retry-After)."""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))


class ServerTimeoutError(InternalServerError):
    """504: the request ran past the server's --request-timeout and was aborted (not retried)."""


class APIConnectionError(APIError):
    """No answer: the connection failed or broke."""


class APITimeoutError(APIConnectionError):
    """No answer within this client's timeout."""


STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
    503: OverloadedError,
    504: ServerTimeoutError,
}


def error_class(status: int) -> type[APIError]:
    return STATUS_ERRORS.get(status) or (InternalServerError if status >= 500 else APIError)


def error_from_payload(payload: dict, status: int | None = None, headers: httpx.Headers | None = None) -> APIError:
    """The exception for an OpenAI error JSON; `status` defaults to its `code` (as in stream events)."""
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    code = error.get("code")
    if status is None:
        status = code if isinstance(code, int) else 500
    return error_class(status)(
        str(error.get("message") or f"HTTP {status}"),
        status=status,
        type=error.get("type"),
        param=error.get("param"),
        code=code,
        body=payload,
        headers=headers,
    )


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error answer whose body has been read."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):  # a proxy's HTML page, say
        text = response.text[:200] or response.reason_phrase
        return error_class(response.status_code)(text, status=response.status_code, headers=response.headers)
    return error_from_payload(payload, response.status_code, response.headers)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
