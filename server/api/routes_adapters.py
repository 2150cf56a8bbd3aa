"""POST /v1/adapters, GET /v1/adapters, DELETE /v1/adapters/{name}."""

from __future__ import annotations

from fastapi import APIRouter

from llmdoctor.server.api.dependencies import AdaptersDep
from llmdoctor.server.api.openapi import error_responses
from llmdoctor.server.api.protocol_adapters import AdapterCard, AdapterDeleted, AdapterList, LoadAdapterRequest

router = APIRouter()


@router.post("/v1/adapters", response_model=AdapterCard, responses=error_responses(400, 401, 403, 404, 409))
async def load_adapter(body: LoadAdapterRequest, service: AdaptersDep) -> AdapterCard:
    return await service.load(body.name, body.path, body.kind)


@router.get("/v1/adapters", response_model=AdapterList, responses=error_responses(401))
async def list_adapters(service: AdaptersDep) -> AdapterList:
    return service.list()


@router.delete("/v1/adapters/{name}", response_model=AdapterDeleted, responses=error_responses(401, 404))
async def unload_adapter(name: str, service: AdaptersDep) -> AdapterDeleted:
    return await service.unload(name)
