"""POST/GET/DELETE /v1/adapters: hot-load, list and unload LoRA adapters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmdoctor.server.adapter_folders import MAX_NAME_LEN
from llmdoctor.server.api.protocol_common import StrictModel
from llmdoctor.server.engine.protocol import AdapterInfo

# server/adapter_folders.py validate_adapter_name, as JSON Schema states it (ECMA-262, no lookaround,
# so every generator and validator reads it): [A-Za-z0-9._-], not only dots, not starting with "__";
# the length is minLength/maxLength. tests/server/api/test_protocol_adapters.py keeps the two equal.
ADAPTER_NAME_PATTERN = (
    r"^(?:[A-Za-z0-9-][A-Za-z0-9._-]*"  # starts with a letter, digit or '-'
    r"|_(?:[A-Za-z0-9.-][A-Za-z0-9._-]*)?"  # or one '_' not followed by another
    r"|\.+[A-Za-z0-9_-][A-Za-z0-9._-]*)$"  # or dots, then something else
)
ADAPTER_NAME_SCHEMA = {"minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": ADAPTER_NAME_PATTERN}


class LoadAdapterRequest(BaseModel):
    model_config = StrictModel

    # The schema only declares the rule: validate_adapter_name checks it (in the service, for the
    # CLI's --doctor/--lora names too), with a message that says it in words.
    name: str = Field(
        description=f"1-{MAX_NAME_LEN} letters, digits, '.', '_' or '-'; not only dots, not starting with '__'",
        json_schema_extra=ADAPTER_NAME_SCHEMA,
    )
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
