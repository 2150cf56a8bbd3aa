"""Optional API key: every /v1 route needs `Authorization: Bearer KEY`, and so do /tokenize and /detokenize
(vLLM's paths; they do the model's work, tokenising up to --max-request-bytes); with --auth-all-routes, every
route but /health does (/metrics, /docs, /redoc, /openapi.json, unknown paths). /health stays open
for load balancers.

An ASGI middleware rather than a route dependency, so a request without the key is refused before
its body is even parsed (a malformed body from a stranger gets 401, not a helpful 400).

The scheme is case-insensitive and may be followed by several spaces (RFC 7235 section 2.1:
`credentials = auth-scheme [ 1*SP token68 ]`, auth-scheme a case-insensitive token); the key itself
is compared exactly, in constant time.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from llmdoctor.server.api.errors import AuthenticationError, error_response

PROTECTED_PREFIX = "/v1"
PROTECTED_PATHS = frozenset({"/tokenize", "/detokenize"})
OPEN_PATHS = frozenset({"/health"})  # open even with --auth-all-routes: load balancers probe it keyless
SCHEME = b"bearer"


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str, all_routes: bool = False):
        self.app = app
        self._expected = api_key.encode()
        self._all_routes = all_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._protects(scope["path"]) and not self._authorized(scope):
            response = error_response(
                AuthenticationError("missing or invalid API key: send 'Authorization: Bearer <key>'")
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _protects(self, path: str) -> bool:
        return is_protected(path, self._all_routes)

    def _authorized(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        token = bearer_token(header)
        return bool(token) and hmac.compare_digest(token, self._expected)  # constant time: no timing oracle


def is_protected(path: str, all_routes: bool) -> bool:
    """Whether the key guards `path` (also what openapi.json declares as needing it)."""
    if all_routes:
        return path not in OPEN_PATHS
    return path.startswith(PROTECTED_PREFIX) or path in PROTECTED_PATHS


def bearer_token(header: bytes) -> bytes:
    """The token68 of `Bearer <token>` (any case, 1+ spaces between); b"" for any other scheme."""
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != SCHEME:
        return b""
    return token.lstrip(b" ")
