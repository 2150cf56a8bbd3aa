"""--max-request-bytes: a body larger than the limit gets HTTP 413 (OpenAI error JSON).

An ASGI middleware, so the limit holds for every route and however the body arrives: a declared
Content-Length over the limit is refused before a byte is read; otherwise the bytes are counted as
they are received, so a chunked body (no Content-Length) or one that lies about its length is cut
off as soon as it passes the limit, never buffered whole.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmdoctor.server.api.errors import RequestTooLargeError, error_response


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        refused = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                refused = True
                if not started:  # (FastAPI reads the whole body before it answers: always the case here)
                    await self._refuse(scope, receive, send)
                # The app sees a client that went away: it stops reading, and whatever it answers
                # is dropped below (the 413 went out already).
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLargeError(
            f"the request body is larger than this server's limit of {self.max_bytes} bytes "
            "(--max-request-bytes); send a shorter prompt, fewer prompts or fewer messages"
        )
        response = error_response(error)
        response.headers["Connection"] = "close"  # the unread rest of the body makes the connection unusable
        await response(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    """Content-Length as sent; -1 when absent or not a number (the server itself rejects a malformed one)."""
    value = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
    try:
        return int(value)
    except ValueError:
        return -1
