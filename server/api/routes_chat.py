"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request

from llmdoctor.server.api.dependencies import ChatDep
from llmdoctor.server.api.disconnect import unless_disconnected
from llmdoctor.server.api.openapi import error_responses, event_stream
from llmdoctor.server.api.protocol_chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from llmdoctor.server.api.sse import EventStreamResponse

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**event_stream(ChatCompletionChunk), **error_responses(400, 401, 404, 413, 503, 504)},
)
async def create_chat_completion(body: ChatCompletionRequest, service: ChatDep, request: Request):
    if body.stream:
        return EventStreamResponse(await unless_disconnected(request, service.stream(body)))
    return await unless_disconnected(request, service.complete(body))
