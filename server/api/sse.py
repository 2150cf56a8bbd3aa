"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llmdoctor.server.api.errors import payload_for
from llmdoctor.server.errors import LLMDoctorError

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def sse_data(payload_json: str) -> str:
    return f"data: {payload_json}\n\n"


def sse_error(exc: BaseException) -> str:
    """An error event mid-stream (the status line is already sent); internal errors leak nothing."""
    if not isinstance(exc, LLMDoctorError):
        logger.error("stream failed", exc_info=exc)
    return sse_data(json.dumps(payload_for(exc)[1]))


class EventStream:
    """The SSE lines of one call. `aclose()` also runs `on_close`, so choices whose stream never
    started (the client left before the first byte) are aborted too."""

    def __init__(self, events: AsyncGenerator[str, None], on_close: Callable[[], None]):
        self._events = events
        self._on_close = on_close

    def __aiter__(self) -> AsyncGenerator[str, None]:
        return self._events

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._on_close()


class EventStreamResponse(StreamingResponse):
    """Streams an EventStream and stops it the moment the client disconnects.

    Starlette only listens for the disconnect under ASGI < 2.4; otherwise it notices at the next
    failed send, i.e. the next token, which can be long for a queued request. We always listen.
    Cleanup is synchronous (aborts are spawned), so it completes inside a cancelled scope.
    """

    media_type = "text/event-stream"

    def __init__(self, content: EventStream):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._stream = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream_then_stop() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                await self.listen_for_disconnect(receive)
                logger.debug("client disconnected mid-stream")
                group.cancel_scope.cancel()
        except OSError:  # the client vanished mid-send
            pass
        finally:
            await self._stream.aclose()
