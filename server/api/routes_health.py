"""GET /health (for load balancers) and GET /metrics (Prometheus); both open without an API key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from llmdoctor.server.api.dependencies import ServicesDep
from llmdoctor.server.api.openapi import error_responses
from llmdoctor.server.api.protocol_health import HealthStatus, ReplicaHealth
from llmdoctor.server.errors import EngineDeadError

router = APIRouter()


NOT_READY = {503: "Not ready: the server is shutting down or its engine is not running (`error.message` says which)"}


@router.get("/health", response_model=HealthStatus, response_model_exclude_none=True,
            responses=error_responses(503, described=NOT_READY),
            response_description="Ready: the engine loop runs and the server admits requests")
async def health(services: ServicesDep) -> HealthStatus:
    """200 while the engine loop runs and the server admits requests; 503 otherwise."""
    if services.generation.draining:
        raise EngineDeadError("shutting down")
    replicas = replica_health(services.engine)
    if not services.engine.healthy:
        if replicas is not None:
            states = ", ".join(f"{r.replica}: {'healthy' if r.healthy else 'not serving'}" for r in replicas)
            raise EngineDeadError(f"no engine replica is healthy ({states or 'none running'})")
        raise EngineDeadError("the engine loop is not running")
    return HealthStatus(replicas=replicas)


def replica_health(engine) -> list[ReplicaHealth] | None:
    """Each replica's state when the engine is replicated (serve --replicas), else None."""
    if not hasattr(engine, "replicas"):
        return None
    return [ReplicaHealth(replica=r["replica"], healthy=r.get("healthy", False), pid=r.get("pid"),
                          seconds_since_report=r.get("age"),
                          running=r.get("running", 0), waiting=r.get("waiting", 0), adapters=r.get("adapters", []),
                          adapter_failures=r.get("adapter_failures", {}))
            for r in engine.replicas()]


@router.get("/metrics", response_class=PlainTextResponse,
            response_description="Prometheus text exposition format (`Content-Type: " + CONTENT_TYPE_LATEST + "`)")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(services.engine), media_type=CONTENT_TYPE_LATEST)
