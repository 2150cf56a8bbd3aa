"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request

from llmdoctor.server.api.dependencies import ChatDep
from llmdoctor.server.api.disconnect import unless_disconnected
from llmdoctor.server.api.protocol_chat import ChatCompletionRequest, ChatCompletionResponse
from llmdoctor.server.api.sse import EventStreamResponse

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def create_chat_completion(body: ChatCompletionRequest, service: ChatDep, request: Request):
    if body.stream:
        return EventStreamResponse(await unless_disconnected(request, service.stream(body)))
    return await unless_disconnected(request, service.complete(body))
