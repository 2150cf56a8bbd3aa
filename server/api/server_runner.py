"""Run the app under uvicorn, with a graceful shutdown that ends every stream cleanly.

uvicorn's own shutdown waits for open connections, then cancels them mid-stream, and only then
tells the app. We take the first SIGTERM/SIGINT ourselves: stop admitting (health turns 503),
let in-flight requests finish for --shutdown-grace seconds, abort the rest (each stream gets its
final chunk, finish_reason "abort", and [DONE]), and only then let uvicorn close. A second signal
falls through to uvicorn (SIGINT twice: exit at once).
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI

from llmdoctor.server.api.app import check_startup_adapters, create_app, drain, open_feedback_database
from llmdoctor.server.api.engine_factory import build_engine
from llmdoctor.server.config import ServerSettings

logger = logging.getLogger(__name__)

# After the drain every response is complete; this only bounds flushing the last bytes.
FLUSH_SECONDS = 5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._drain_task is None and self.started and self._loop is not None:
            # A signal handler may interrupt the loop anywhere: only hand the work over.
            self._loop.call_soon_threadsafe(self._begin_drain)
            return
        super().handle_exit(sig, frame)

    def _begin_drain(self) -> None:
        if self._drain_task is None:
            logger.info("shutdown requested: finishing in-flight requests")
            self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self._app)
        finally:
            self.should_exit = True


def serve(settings: ServerSettings, started_at: float) -> None:
    """Open the feedback database and build the engine (clear errors before anything listens), then
    serve until a signal."""
    _quiet_progress_bars()
    feedback_db = open_feedback_database(settings)  # before the slow model load: a bad URL fails at once
    engine = build_engine(settings)
    check_startup_adapters(engine, settings)
    # Load the models now: a bad --model, --doctor-base or --max-model-len fails here with one line
    # (cli.py), not as a traceback from inside uvicorn's lifespan. The engine's thread is not tied
    # to this event loop, so the app's lifespan later finds it running.
    asyncio.run(engine.start())
    app = create_app(settings, engine, feedback_db=feedback_db, started_at=started_at)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=FLUSH_SECONDS,
        access_log=settings.log_level == "debug",
    )
    DrainingServer(config, app).run()


def _quiet_progress_bars() -> None:
    """transformers draws a weight-loading bar on every start; a server log wants lines, not bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
