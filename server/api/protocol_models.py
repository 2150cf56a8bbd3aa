"""GET /v1/models: OpenAI's model list, plus `kind` saying what each entry is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmdoctor.server.api.protocol_common import now

ModelKind = Literal["patient", "patient_adapter", "doctor"]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "llmdoctor"
    kind: ModelKind  # extension: the patient, a LoRA on it (usable as `model`), or a doctor (usable in `guidance`)
    parent: str | None = None  # the base an adapter was trained on
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
