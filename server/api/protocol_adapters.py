"""POST/GET/DELETE /v1/adapters: hot-load, list and unload LoRA adapters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmdoctor.server.api.protocol_common import StrictModel
from llmdoctor.server.engine.protocol import AdapterInfo


class LoadAdapterRequest(BaseModel):
    model_config = StrictModel

    name: str = Field(description="1-64 letters, digits, '.', '_' or '-'")
    path: str = Field(min_length=1, description="adapter folder on the server, under an --adapter-root")
    kind: Literal["patient", "doctor"]


class AdapterCard(BaseModel):
    object: Literal["adapter"] = "adapter"
    name: str
    kind: Literal["patient", "doctor"]
    path: str
    base_model: str
    rank: int
    meta: dict = Field(default_factory=dict)

    @classmethod
    def of(cls, info: AdapterInfo) -> AdapterCard:
        return cls(
            name=info.name, kind=info.kind, path=info.path, base_model=info.base_model, rank=info.rank, meta=info.meta
        )


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterCard]


class AdapterDeleted(BaseModel):
    object: Literal["adapter.deleted"] = "adapter.deleted"
    name: str
    deleted: bool = True
