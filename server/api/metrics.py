"""Prometheus metrics for GET /metrics, one registry per app (tests run several apps in one process).

Request counts come from an ASGI middleware (every route, errors included); token counts and
latencies from the generation service; engine gauges are read from `engine.stats()` at scrape time.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmdoctor.server.engine.protocol import Engine

# Seconds; CPU decode steps are ~0.1-0.3 s, GPU steps ~10 ms: cover both.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmdoctor_requests", "HTTP requests by route and status", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "llmdoctor_prompt_tokens", "Prompt tokens admitted (each choice prefills its prompt)", registry=r
        )
        self.generated_tokens = Counter("llmdoctor_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "llmdoctor_time_to_first_token_seconds", "Arrival to first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "llmdoctor_inter_token_latency_seconds", "Gap between tokens", buckets=ITL_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "llmdoctor_e2e_request_latency_seconds", "Arrival to last token", buckets=E2E_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("llmdoctor_queue_depth", "Requests waiting for a slot", registry=r)
        self.running = Gauge("llmdoctor_running_requests", "Requests being decoded", registry=r)
        self.adapters = Gauge("llmdoctor_adapters_loaded", "Adapters loaded, by kind", ["kind"], registry=r)
        # --log-completions: the completion log's writer (server/feedback/completion_log.py)
        self.completions_logged = Counter(
            "llmdoctor_completions_logged", "Completion choices written to the feedback database", registry=r
        )
        self.completions_lost = Counter(
            "llmdoctor_completions_log_lost", "Completion choices the log lost, by reason (queue_full, write_failed)",
            ["reason"], registry=r,
        )
        # serve --replicas: each engine replica as it last reported itself
        self.replica_gauges = {
            key: Gauge(f"llmdoctor_replica_{key}", text, ["replica"], registry=r) for key, text in (
                ("healthy", "1 while the replica reports a running engine loop"),
                ("running", "Requests the replica is decoding"),
                ("waiting", "Requests waiting for a slot on the replica"),
                ("generated_tokens", "Tokens the replica generated since it started"),
            )
        }

    def render(self, engine: Engine) -> bytes:
        """Refresh the engine gauges, then the Prometheus text format."""
        stats = engine.stats()
        self.queue_depth.set(stats.waiting)
        self.running.set(stats.running)
        kinds = [a.kind for a in engine.adapters()]
        for kind in ("patient", "doctor"):
            self.adapters.labels(kind).set(kinds.count(kind))
        if hasattr(engine, "replicas"):
            for gauge in self.replica_gauges.values():
                gauge.clear()  # a replica that went away leaves no stale series
            for replica in engine.replicas():
                for key, gauge in self.replica_gauges.items():
                    gauge.labels(replica["replica"]).set(float(replica.get(key) or 0))
        return generate_latest(self.registry)


class RequestTimer:
    """Per-request latencies: time to first token, gaps between tokens, end to end."""

    __slots__ = ("_metrics", "_arrival", "_last")

    def __init__(self, metrics: ServerMetrics, arrival: float):
        self._metrics = metrics
        self._arrival = arrival
        self._last: float | None = None

    def tokens(self, count: int) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._metrics.ttft.observe(now - self._arrival)
        else:
            self._metrics.itl.observe(now - self._last)
        self._last = now
        self._metrics.generated_tokens.inc(count)

    def finished(self) -> None:
        self._metrics.e2e.observe(time.perf_counter() - self._arrival)


class RequestCountMiddleware:
    """Counts every HTTP request by route template (unmatched paths share one label) and status."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # stays 500 if the app fails before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
