"""`llmdoctor serve --replicas N`: the same FastAPI app as a Ray Serve ingress, in front of an
engine deployment with N replicas (engine_replica.py), one GPU each where the cluster has GPUs,
else a share of the CPUs.

    build_application(settings)  -> the Serve application (also what server/ray_serve.py exposes
                                    to `serve run` / KubeRay's RayService, from LLMDOCTOR_* env vars)
    serve_replicated(settings)   -> the CLI: start or join Ray, run the app on --host/--port, wait
                                    for SIGINT/SIGTERM, shut down.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import Any

from ray import serve

from llmdoctor.server.config import ServerSettings
from llmdoctor.server.replicas.engine_replica import replica_class
from llmdoctor.server.replicas.ray_placement import replica_placement, start_ray
from llmdoctor.server.replicas.registry import REGISTRY_NAMESPACE, get_registry, registry_name
from llmdoctor.server.replicas.replicated_engine import ReplicatedEngine

logger = logging.getLogger(__name__)
APP_NAME = "llmdoctor"
REPLICA_DEPLOYMENT = "EngineReplica"


def replica_prefix(app: str) -> str:
    """The name Serve gives each replica actor of the engine deployment, up to its unique id."""
    return f"SERVE_REPLICA::{app}#{REPLICA_DEPLOYMENT}#"


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Gateway:
    """The HTTP API (our FastAPI app) over a ReplicatedEngine."""

    def __init__(self, engine_handle, settings: dict[str, Any], app: str):
        from llmdoctor.server.model_store import resolve_model

        self.settings = ServerSettings(**settings)
        # The gateway tokenizes, so it needs the model's tokenizer files: it resolves the same model.
        model = resolve_model(self.settings.model, self.settings.cache_dir)
        self.engine = ReplicatedEngine(engine_handle, get_registry(app, replica_prefix(app)), model.folder,
                                       self.settings.max_batch, self.settings.max_queue)

    def __serve_build_asgi_app__(self):
        from llmdoctor.server.api.app import create_app

        return create_app(self.settings, engine=self.engine)


def build_application(settings: ServerSettings, app: str = APP_NAME):
    """The Serve application: Gateway (route prefix /) -> EngineReplica x settings.replicas."""

    replicas = settings.replicas or 1
    replica_options, threads = replica_placement(settings, replicas, settings.ray_address is None)
    plain = _plain(settings)
    engine = serve.deployment(replica_class(settings.max_loras), name=REPLICA_DEPLOYMENT,
                              num_replicas=replicas, ray_actor_options=replica_options,
                              health_check_period_s=5, health_check_timeout_s=30,
                              max_ongoing_requests=settings.max_batch + settings.max_queue,
                              graceful_shutdown_timeout_s=settings.shutdown_grace)
    return Gateway.options(max_ongoing_requests=10_000).bind(
        engine.bind(plain, app, replica_prefix(app), threads), plain, app)


def _plain(settings: ServerSettings) -> dict[str, Any]:
    """The settings as plain values (they cross to other processes); the API key stays a secret
    only in the gateway's environment if it came from there."""
    values = json.loads(settings.model_dump_json(exclude_unset=True, exclude={"api_key"}))
    if settings.api_key is not None:
        values["api_key"] = settings.api_key.get_secret_value()
    return values


def serve_replicated(settings: ServerSettings) -> None:
    """The `llmdoctor serve --replicas N` process: blocks until SIGINT/SIGTERM."""
    import ray

    local = settings.ray_address is None
    start_ray(settings.ray_address, settings.replicas or 1, namespace=REGISTRY_NAMESPACE)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        started = time.monotonic()
        serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
        logger.info("ready in %.1f s: %d replica(s) on http://%s:%d", time.monotonic() - started,
                    settings.replicas or 1, settings.host, settings.port)
        stop.wait()
        logger.info("shutting down: draining for up to %.0f s", settings.shutdown_grace)
    finally:
        # Bounded: a signal sent to the whole process group (Ctrl+C, `timeout`) may have stopped the
        # local Ray already, and then these calls would wait for it forever.
        _bounded(lambda: _delete_app(ray), settings.shutdown_grace + 15)
        _bounded(serve.shutdown if local else (lambda: None), 15)
        _bounded(ray.shutdown, 15)


def _delete_app(ray) -> None:
    serve.delete(APP_NAME)  # replicas drain in-flight requests (graceful_shutdown_timeout_s)
    ray.kill(ray.get_actor(registry_name(APP_NAME), namespace=REGISTRY_NAMESPACE))


def _bounded(step, seconds: float) -> None:
    """Run a shutdown step, giving up after `seconds` (logged) or on its error (it is gone already)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        logger.warning("shutdown step %s did not finish in %.0f s; going on", getattr(step, "__name__", step), seconds)
