"""POST /tokenize and POST /detokenize (vLLM's paths and shapes)."""

from __future__ import annotations

from fastapi import APIRouter

from llmdoctor.server.api.dependencies import TokenizeDep
from llmdoctor.server.api.openapi import error_responses
from llmdoctor.server.api.protocol_tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse, responses=error_responses(400, 401, 404, 413))
async def tokenize(body: TokenizeRequest, service: TokenizeDep) -> TokenizeResponse:
    return await service.tokenize(body)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=error_responses(400, 401, 404, 413))
async def detokenize(body: DetokenizeRequest, service: TokenizeDep) -> DetokenizeResponse:
    return await service.detokenize(body)
