"""GET /health: what a load balancer reads (the status code is what matters; the body says why)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class HealthStatus(BaseModel):
    """200: the engine loop runs and the server admits requests. Otherwise a 503 ErrorResponse,
    type `service_unavailable`: "shutting down" (draining) or "the engine loop is not running"."""

    status: Literal["ok"] = "ok"
