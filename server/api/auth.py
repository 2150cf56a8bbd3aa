"""Optional API key: every /v1 route needs `Authorization: Bearer KEY`; /health and /metrics stay open.

An ASGI middleware rather than a route dependency, so a request without the key is refused before
its body is even parsed (a malformed body from a stranger gets 401, not a helpful 400).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from llmdoctor.server.api.errors import AuthenticationError, error_response

PROTECTED_PREFIX = "/v1"


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX) and not self._authorized(scope):
            response = error_response(
                AuthenticationError("missing or invalid API key: send 'Authorization: Bearer <key>'")
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return hmac.compare_digest(given, self._expected)  # constant time: no timing oracle on the key
