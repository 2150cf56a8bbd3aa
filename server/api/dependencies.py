"""Services are built once in the app's lifespan; routes reach them through these dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from llmdoctor.server.api.generation import GenerationService
from llmdoctor.server.api.metrics import ServerMetrics
from llmdoctor.server.api.serving_adapters import AdaptersService
from llmdoctor.server.api.serving_chat import ChatService
from llmdoctor.server.api.serving_completions import CompletionsService
from llmdoctor.server.api.serving_models import ModelsService
from llmdoctor.server.api.serving_tokenize import TokenizeService
from llmdoctor.server.engine.protocol import Engine


@dataclass(frozen=True)
class Services:
    engine: Engine
    metrics: ServerMetrics
    generation: GenerationService
    models: ModelsService
    adapters: AdaptersService
    completions: CompletionsService
    chat: ChatService
    tokenize: TokenizeService


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_completions(request: Request) -> CompletionsService:
    return request.app.state.services.completions


def get_chat(request: Request) -> ChatService:
    return request.app.state.services.chat


def get_tokenize(request: Request) -> TokenizeService:
    return request.app.state.services.tokenize


def get_models(request: Request) -> ModelsService:
    return request.app.state.services.models


def get_adapters(request: Request) -> AdaptersService:
    return request.app.state.services.adapters


ServicesDep = Annotated[Services, Depends(get_services)]
CompletionsDep = Annotated[CompletionsService, Depends(get_completions)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
ModelsDep = Annotated[ModelsService, Depends(get_models)]
TokenizeDep = Annotated[TokenizeService, Depends(get_tokenize)]
AdaptersDep = Annotated[AdaptersService, Depends(get_adapters)]
