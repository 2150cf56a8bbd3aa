"""GET /health: what a load balancer reads (the status code is what matters; the body says why)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ReplicaHealth(BaseModel):
    """One engine replica of `serve --replicas N`, as it last reported itself."""

    replica: str
    healthy: bool
    pid: int | None = None  # the replica's process on its node
    seconds_since_report: float | None = None  # None: still starting (loading the model)
    running: int = 0
    waiting: int = 0
    adapters: list[str] = []
    # doctor -> why this replica refused to load it (its own folder check); requests naming it get a 503 there
    adapter_failures: dict[str, str] = {}


class HealthStatus(BaseModel):
    """200: the engine loop runs and the server admits requests. Otherwise a 503 ErrorResponse,
    type `service_unavailable`: "shutting down" (draining) or "the engine loop is not running".
    With --replicas: 200 while at least one replica is healthy; `replicas` lists each."""

    status: Literal["ok"] = "ok"
    replicas: list[ReplicaHealth] | None = None
