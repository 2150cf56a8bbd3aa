"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter

from llmdoctor.server.api.dependencies import ModelsDep
from llmdoctor.server.api.openapi import error_responses
from llmdoctor.server.api.protocol_models import ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401))
async def list_models(service: ModelsDep) -> ModelList:
    return service.list_models()
