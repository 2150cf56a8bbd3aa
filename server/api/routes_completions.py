"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request

from llmdoctor.server.api.dependencies import CompletionsDep
from llmdoctor.server.api.disconnect import unless_disconnected
from llmdoctor.server.api.openapi import error_responses, event_stream
from llmdoctor.server.api.protocol_completions import (
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from llmdoctor.server.api.sse import EventStreamResponse

router = APIRouter()


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**event_stream(CompletionStreamResponse), **error_responses(400, 401, 404, 413, 503, 504)},
)
async def create_completion(body: CompletionRequest, service: CompletionsDep, request: Request):
    if body.stream:
        return EventStreamResponse(await unless_disconnected(request, service.stream(body)))
    return await unless_disconnected(request, service.complete(body))
