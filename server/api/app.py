"""The FastAPI app: routers, error mapping, middleware, and a lifespan that builds the engine and the
services once.

`create_app(settings, engine=None, feedback_db=None)`: the app owns the engine (starts it, drains and
shuts it down); without one it builds what `settings.engine` names. Likewise the feedback database,
when completions are logged (--log-completions / --feedback-db): the app writes its completion log
and closes it after the drain, so choices cut off at shutdown are logged too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from llmdoctor.server.api import (
    routes_adapters,
    routes_chat,
    routes_completions,
    routes_health,
    routes_models,
    routes_tokenize,
)
from llmdoctor.server.api.auth import ApiKeyMiddleware, is_protected
from llmdoctor.server.api.dependencies import Services
from llmdoctor.server.api.detokenizer import TokenTexts
from llmdoctor.server.api.engine_factory import build_engine
from llmdoctor.server.api.errors import install_error_handlers
from llmdoctor.server.api.generation import GenerationService
from llmdoctor.server.api.metrics import RequestCountMiddleware, ServerMetrics
from llmdoctor.server.api.openapi import install_openapi
from llmdoctor.server.api.prompts import PromptTokenizer
from llmdoctor.server.api.request_limits import BodySizeLimitMiddleware
from llmdoctor.server.api.serving_adapters import AdaptersService
from llmdoctor.server.api.serving_chat import ChatService
from llmdoctor.server.api.serving_completions import CompletionsService
from llmdoctor.server.api.serving_models import ModelsService
from llmdoctor.server.api.serving_tokenize import TokenizeService
from llmdoctor.server.api.text_validation import reject_invalid_text
from llmdoctor.server.config import ConfigError, ServerSettings
from llmdoctor.server.engine.protocol import Engine
from llmdoctor.server.errors import LLMDoctorError
from llmdoctor.server.feedback.completion_log import CompletionLog
from llmdoctor.server.shipped_doctors import startup_doctors

if TYPE_CHECKING:
    from llmdoctor.server.feedback.database import FeedbackDatabase

logger = logging.getLogger(__name__)

ROUTERS = (routes_completions, routes_chat, routes_models, routes_tokenize, routes_adapters, routes_health)


def create_app(
    settings: ServerSettings,
    engine: Engine | None = None,
    *,
    feedback_db: FeedbackDatabase | None = None,
    started_at: float | None = None,
) -> FastAPI:
    """`started_at` (time.monotonic()) is when the process began, for the 'ready in' log line.
    `feedback_db`: the database opened by open_feedback_database(settings); None = the lifespan opens it."""
    started_at = time.monotonic() if started_at is None else started_at
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            _engine_running(engine, settings) as owned,
            _completion_log(feedback_db, settings, metrics) as completion_log,
        ):
            services = await build_services(owned, settings, metrics, completion_log)
            app.state.services = services
            await load_startup_adapters(services.adapters, settings)
            logger.info("ready in %.1f s: %s on http://%s:%d", time.monotonic() - started_at,
                        owned.model_name, settings.host, settings.port)
            yield
            await services.generation.drain(settings.shutdown_grace)  # choices cut off here are logged too

    app = FastAPI(title="llmdoctor", summary="Decode-time alignment of a frozen LLM with doctor models",
                  lifespan=lifespan, dependencies=[Depends(reject_invalid_text)])
    app.state.settings = settings
    install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router)
    install_openapi(app, protected=partial(is_protected, all_routes=settings.auth_all_routes)
                    if settings.api_key is not None else None)
    # Middleware added later runs first: request counting, then the key, then the body limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value(),
                           all_routes=settings.auth_all_routes)
    app.add_middleware(RequestCountMiddleware, metrics=metrics)  # added last = outermost: counts 401s too
    return app


@asynccontextmanager
async def _engine_running(engine: Engine | None, settings: ServerSettings) -> AsyncIterator[Engine]:
    owned = engine if engine is not None else await asyncio.to_thread(build_engine, settings)
    if not owned.healthy:  # `llmdoctor serve` starts it before listening
        await owned.start()
    try:
        yield owned
    finally:
        await owned.shutdown(grace_seconds=0)


@asynccontextmanager
async def _completion_log(
    database: FeedbackDatabase | None, settings: ServerSettings, metrics: ServerMetrics
) -> AsyncIterator[CompletionLog | None]:
    """A completion log on `database` (None: opened from the settings); None when completions are not
    logged. On exit it writes what is queued and closes the database."""
    database = database or await asyncio.to_thread(open_feedback_database, settings)
    if database is None:
        yield None
        return
    log = CompletionLog(database, on_written=metrics.completions_logged.inc,
                        on_lost=lambda reason, count: metrics.completions_lost.labels(reason).inc(count))
    logger.info("logging completions to %s", database.url)
    try:
        yield log
    finally:
        await asyncio.to_thread(log.close)


def open_feedback_database(settings: ServerSettings) -> FeedbackDatabase | None:
    """The database completions are logged to (a new one is created at head); None when they are not
    logged. A bad URL or an outdated schema is one line naming --feedback-db (ConfigError)."""
    url = settings.completion_log_url
    if url is None:
        return None
    # Alembic loads only when completions are logged (it logs its plugins at import)
    from llmdoctor.server.feedback.database import FeedbackDatabaseError, open_database

    try:
        return open_database(url)
    except FeedbackDatabaseError as exc:
        raise ConfigError(f"--feedback-db: {exc.message}") from None


async def build_services(
    engine: Engine, settings: ServerSettings, metrics: ServerMetrics, completion_log: CompletionLog | None = None
) -> Services:
    """Once per app, after the engine started (its max_model_len is known then). `completion_log`: where
    served choices are logged; None = not logged (choices carry no completion_id)."""
    tokenizer = await asyncio.to_thread(_load_tokenizer, engine.model_folder)
    prompts = PromptTokenizer(tokenizer, engine.max_model_len)
    token_text = TokenTexts(tokenizer)
    generation = GenerationService(engine, tokenizer, metrics, settings.request_timeout)
    models = ModelsService(engine)
    return Services(
        engine=engine,
        metrics=metrics,
        generation=generation,
        models=models,
        adapters=AdaptersService(engine, settings.adapter_root, settings.max_lora_rank),
        completions=CompletionsService(models, prompts, generation, token_text, completion_log),
        chat=ChatService(models, prompts, generation, token_text, completion_log),
        tokenize=TokenizeService(models, prompts),
    )


def _startup_adapters(settings: ServerSettings):
    """(flag, kind, NAME=PATH entry) for every adapter named on the command line."""
    for flag, entry in startup_doctors(settings):
        yield flag, "doctor", entry
    for entry in settings.lora:
        yield "--lora", "patient", entry


def check_startup_adapters(engine: Engine, settings: ServerSettings) -> None:
    """Refuse a bad --doctor/--lora with a one-line error naming the flag, before anything listens."""
    adapters = AdaptersService(engine, settings.adapter_root, settings.max_lora_rank)
    for flag, kind, entry in _startup_adapters(settings):
        try:
            adapters.check_trusted(entry.name, entry.path, kind)
        except LLMDoctorError as exc:
            hint = "; --no-default-doctors skips the shipped doctors" if flag == "--default-doctors" else ""
            raise ConfigError(f"{flag} {entry.name}={entry.path}: {exc.message}{hint}") from None


async def load_startup_adapters(adapters: AdaptersService, settings: ServerSettings) -> None:
    for _, kind, entry in _startup_adapters(settings):
        card = await adapters.load_trusted(entry.name, entry.path, kind)
        logger.info("loaded %s adapter %s (rank %d) from %s", kind, card.name, card.rank, card.path)


async def drain(app: FastAPI) -> None:
    """Graceful shutdown, first half: stop admitting, let in-flight requests finish (up to
    --shutdown-grace), then end the rest cleanly. The server closes its sockets afterwards."""
    await app.state.services.generation.drain(app.state.settings.shutdown_grace)


def _load_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
