"""GET /v1/models: OpenAI's model list, plus `kind` saying what each entry is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmdoctor.server.api.protocol_common import now

ModelKind = Literal["patient", "patient_adapter", "doctor"]


class EvalRow(BaseModel):
    kl_per_token: float  # the mean KL from the patient per generated token, nats
    score: float  # the eval's score of the responses (which one: DoctorEval.score)
    mean_tokens: float


class DoctorEval(BaseModel):
    """How a doctor made by `llmdoctor recipe` did on held-out prompts (its llmdoctor.json)."""

    score: str  # the eval.csv column: score_sentiment, score_length (minus the token count), ...
    beta: float  # the doctor's beta in `doctor` (ratio mode): the one whose KL is nearest the DPO adapter's
    doctor: EvalRow
    patient: EvalRow  # the patient alone
    dpo: EvalRow | None = None  # a DPO patient adapter trained on the same pairs
    prompts: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "llmdoctor"
    kind: ModelKind  # extension: the patient, a LoRA on it (usable as `model`), or a doctor (usable in `guidance`)
    parent: str | None = None  # the base an adapter was trained on
    max_model_len: int | None = None
    dimension: str | None = None  # doctors: what they steer toward (positivity, conciseness, ...)
    eval: DoctorEval | None = None  # doctors made by `llmdoctor recipe`: their eval row


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
