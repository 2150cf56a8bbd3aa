"""GET /health (for load balancers) and GET /metrics (Prometheus); both open without an API key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from llmdoctor.server.api.dependencies import ServicesDep
from llmdoctor.server.api.openapi import error_responses
from llmdoctor.server.api.protocol_health import HealthStatus
from llmdoctor.server.errors import EngineDeadError

router = APIRouter()


NOT_READY = {503: "Not ready: the server is shutting down or its engine is not running (`error.message` says which)"}


@router.get("/health", response_model=HealthStatus, responses=error_responses(503, described=NOT_READY),
            response_description="Ready: the engine loop runs and the server admits requests")
async def health(services: ServicesDep) -> HealthStatus:
    """200 while the engine loop runs and the server admits requests; 503 otherwise."""
    if services.generation.draining:
        raise EngineDeadError("shutting down")
    if not services.engine.healthy:
        raise EngineDeadError("the engine loop is not running")
    return HealthStatus()


@router.get("/metrics", response_class=PlainTextResponse,
            response_description="Prometheus text exposition format (`Content-Type: " + CONTENT_TYPE_LATEST + "`)")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(services.engine), media_type=CONTENT_TYPE_LATEST)
