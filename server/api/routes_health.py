"""GET /health (for load balancers) and GET /metrics (Prometheus); both open without an API key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from llmdoctor.server.api.dependencies import ServicesDep
from llmdoctor.server.api.errors import error_payload

router = APIRouter()


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    """200 while the engine loop runs and the server admits requests; 503 otherwise."""
    if services.generation.draining:
        return JSONResponse(error_payload("shutting down", "service_unavailable", 503), status_code=503)
    if not services.engine.healthy:
        return JSONResponse(error_payload("the engine loop is not running", "service_unavailable", 503), 503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(services.engine), media_type=CONTENT_TYPE_LATEST)
