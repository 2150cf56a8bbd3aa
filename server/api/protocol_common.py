"""Schemas shared by /v1/completions and /v1/chat/completions: sampling fields, guidance, usage.

Every float is finite: Python's json (and so FastAPI) accepts NaN/Infinity literals, and a NaN
beta or temperature would otherwise reach the decode rule. Ranges (alpha, beta, temperature, top_k)
are the engine's own (server/engine/protocol.py, README "Guidance"), so openapi.json shows them.

A field that accepts several shapes (`stop`: a string or a list; `doctors`: a list or a mapping) is
typed as the one shape the code reads, normalised by a `mode="before"` validator whose
`json_schema_input_type` declares every shape it accepts: openapi.json states what the server serves,
and errors keep pointing at the normalised field (`guidance.doctors[0].beta`).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from typing_extensions import TypeAliasType

from llmdoctor.server.engine.protocol import (
    MAX_BIAS,
    MAX_KL,
    MAX_PENALTY,
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MAX_WEIGHT,
    MIN_TEMPERATURE,
    MIN_WEIGHT,
    DoctorWeight,
    GuidanceMode,
    Guidance,
    OutputFormat,
    SamplingParams,
)
from llmdoctor.server.engine.structured_output import check_schema
from llmdoctor.server.errors import InvalidRequestError

MAX_LOGPROBS = 20  # the engine's limit (SamplingParams.logprobs)
MAX_N = 64  # choices per prompt; each is an engine request
MAX_STOPS = 16  # stop strings per request

StrictModel = ConfigDict(extra="forbid")
# What the completion log keeps of a request's sampling (SamplingFields.sampling_record)
SAMPLING_RECORD_FIELDS = frozenset({
    "n", "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "max_completion_tokens", "min_tokens",
    "stop", "stop_token_ids", "ignore_eos", "frequency_penalty", "presence_penalty", "repetition_penalty",
    "logit_bias", "response_format",
})

StopString = Annotated[str, Field(min_length=1)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOPS)]
StopInput = TypeAliasType("StopInput", StopString | StopList | None)  # named: one schema in openapi.json
BiasValue = Annotated[FiniteFloat, Field(ge=-MAX_BIAS, le=MAX_BIAS)]
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]  # logit_bias keys: token ids as decimal strings


def _zero_or_not_tiny(value: float) -> float:
    """A weight is 0 (off) or at least MIN_WEIGHT in magnitude: anything between is a typo for 0."""
    if value != 0.0 and abs(value) < MIN_WEIGHT:
        raise ValueError(f"must be 0 (off) or at least {MIN_WEIGHT:g} in magnitude")
    return value


def rule_weight(lowest: float) -> object:
    """A finite weight in [lowest, MAX_WEIGHT], 0 or not tiny. The bounds come before the validator:
    in an alias (Beta is also the value of the `doctors` mapping), bounds after it reach openapi.json
    as `ge`/`le`, which are not JSON Schema, instead of `minimum`/`maximum`."""
    return Annotated[FiniteFloat, Field(ge=lowest, le=MAX_WEIGHT), AfterValidator(_zero_or_not_tiny)]


DoctorName = Annotated[str, Field(min_length=1)]
Beta = Annotated[
    rule_weight(-MAX_WEIGHT),
    Field(description=f"the doctor's weight: 0 = off; otherwise {MIN_WEIGHT:g} <= |beta| <= {MAX_WEIGHT:g}; "
                      "negative steers away from what the doctor prefers"),
]
Alpha = rule_weight(0.0)


class DoctorWeightSchema(BaseModel):
    model_config = StrictModel

    name: DoctorName
    beta: Beta
    mode: GuidanceMode = Field(
        "product",
        description="product: beta * log p_doctor (the rule as written); ratio: beta * (log p_doctor - "
                    "log p_patient), the doctor's tilt away from the patient it was trained on, without "
                    "sharpening the patient (recommended for doctors that are LoRAs on the patient)",
    )


class GuidanceSchema(BaseModel):
    """The extension field: `{"alpha": 1.0, "doctors": [{"name": "helpful", "beta": 0.8}]}`.

    `doctors` may also be a mapping `{"helpful": 0.8}`.
    """

    model_config = StrictModel

    alpha: Alpha = Field(
        1.0,
        description=f"the patient's weight: 0, or in [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}]; 0 needs a doctor with a "
                    "non-zero beta",
    )
    doctors: list[DoctorWeightSchema] = Field(default_factory=list)
    explain: bool = Field(
        False, description="add to each choice an `explanation`: per generated token, the patient's, each doctor's "
                           "and the rule's log-prob of it and the rule's KL from the patient at that step "
                           "(streamed too)")
    max_kl: FiniteFloat | None = Field(
        None, ge=0, le=MAX_KL,
        description="a KL budget in nats per token: on a step where the rule would move further than this from the "
                    "patient, every beta (and alpha's distance from 1) is scaled down by one factor so that the step "
                    "stays within it; `beta_scale` in the explanation shows the factor")

    @field_validator("doctors", mode="before", json_schema_input_type=list[DoctorWeightSchema] | dict[DoctorName, Beta])
    @classmethod
    def _mapping_to_list(cls, value: object) -> object:
        if isinstance(value, dict):
            return [{"name": name, "beta": beta} for name, beta in value.items()]
        return value

    def to_guidance(self) -> Guidance:
        return Guidance(alpha=self.alpha, doctors=tuple(DoctorWeight(d.name, d.beta, d.mode) for d in self.doctors),
                        explain=self.explain, max_kl=self.max_kl)


class TokenExplanationOut(BaseModel):
    """One generated token under `guidance.explain`. `rule_logprob` is the log-prob of the distribution the token
    was drawn from (the value `logprobs` reports); `kl` the rule's KL from the patient at that step (nats);
    `beta_scale` the factor guidance.max_kl put on the doctors' pull (1: within budget)."""

    token: str
    patient_logprob: float
    doctor_logprobs: dict[str, float]
    rule_logprob: float
    kl: float
    beta_scale: float = 1.0


class StreamOptions(BaseModel):
    model_config = StrictModel

    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        False, description="vLLM's extension: with include_usage, every chunk also carries its choice's usage so far")


class JsonSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema", description="the JSON Schema the output follows")
    strict: bool | None = None  # accepted; the schema is always enforced (additional properties refused)


class ResponseFormat(BaseModel):
    """`{"type": "text"}` (the default), `{"type": "json_object"}` (any JSON object) or
    `{"type": "json_schema", "json_schema": {"name", "schema"}}`: enforced token by token on the rule."""

    model_config = StrictModel

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema_for_its_type(cls, value: JsonSchemaFormat | None, info: ValidationInfo) -> JsonSchemaFormat | None:
        if value is not None and info.data.get("type") != "json_schema":
            raise ValueError("is only allowed with type json_schema")
        return value

    def output_format(self) -> OutputFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return OutputFormat("json_object")
        if self.json_schema is None:
            raise InvalidRequestError("response_format.json_schema is required with type json_schema",
                                      "response_format.json_schema")
        return OutputFormat("json_schema", check_schema(self.json_schema.schema_))


class SamplingFields(BaseModel):
    """Fields both endpoints share, with OpenAI's names and vLLM's extensions (top_k, ignore_eos, ...)."""

    model_config = StrictModel

    model: str | None = None  # None = the patient
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: FiniteFloat = Field(
        1.0, ge=0, le=MAX_TEMPERATURE,
        description=f"0 = greedy; values in (0, {MIN_TEMPERATURE:g}) are raised to {MIN_TEMPERATURE:g}, as vLLM does",
    )
    top_p: FiniteFloat = Field(1.0, gt=0, le=1,
                               description="nucleus mass in (0, 1]; the most likely token always stays")
    top_k: int = Field(0, ge=-1, le=MAX_TOP_K, description="0 or -1 = off; a value >= the vocabulary size is off too")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: StopList = Field(default_factory=list)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    guidance: GuidanceSchema | None = None
    # Applied to the rule's distribution, in the order README "Sampling" gives (engine/logit_adjust.py)
    frequency_penalty: FiniteFloat = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY,
                                           description="minus penalty x the token's count in the output so far")
    presence_penalty: FiniteFloat = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY,
                                          description="minus penalty once the token is in the output")
    repetition_penalty: FiniteFloat = Field(
        1.0, gt=0, le=MAX_REPETITION_PENALTY,
        description="vLLM's extension: a token seen in the prompt or output has its score divided by this when "
                    "positive, multiplied when not; 1 = off")
    logit_bias: dict[TokenIdKey, BiasValue] | None = Field(
        None, description="token id (as a string) -> a bias added to its score, in [-100, 100]; -100 bans it")
    min_p: FiniteFloat = Field(0.0, ge=0, le=1, description="vLLM's extension: drop tokens less likely than min_p x "
                                                              "the most likely one (after temperature); 0 = off")
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: EOS and stop_token_ids cannot end the output "
                                                 "before this many tokens")
    response_format: ResponseFormat | None = None
    user: str | None = None

    @field_validator("stop", mode="before", json_schema_input_type=StopInput)
    @classmethod
    def _one_stop_to_list(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a string or a list of strings")
        return value

    @field_validator("stream_options")
    @classmethod
    def _options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("is only allowed when stream is true")
        return value

    @property
    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def include_usage_in_every_chunk(self) -> bool:
        """vLLM's `continuous_usage_stats`, which (as there) takes effect with `include_usage` only."""
        return self.include_usage_in_stream and self.stream_options.continuous_usage_stats

    def to_guidance(self) -> Guidance:
        return self.guidance.to_guidance() if self.guidance else Guidance()

    def guidance_record(self) -> dict | None:
        """The request's guidance as JSON, for the completion log."""
        return self.guidance.model_dump(mode="json") if self.guidance else None

    def sampling_record(self) -> dict:
        """The request's sampling parameters as JSON, for the completion log (unset optional ones left out)."""
        return self.model_dump(mode="json", include=set(SAMPLING_RECORD_FIELDS), exclude_none=True, by_alias=True)

    @property
    def logit_bias_ids(self) -> list[int]:
        return [int(key) for key in self.logit_bias or {}]

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """The engine's parameters; `max_tokens` comes resolved (and checked against the context) by the service."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop_token_ids=tuple(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            min_p=self.min_p,
            min_tokens=self.min_tokens,
            logit_bias=tuple((int(key), bias) for key, bias in (self.logit_bias or {}).items()),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            output_format=self.response_format.output_format() if self.response_format else None,
        )


CompletionId = Annotated[
    str | None,
    Field(description="the choice's id in the completion log, which feedback votes name; only when the server logs "
                      "completions (--log-completions); in a stream, on the choice's first chunk"),
]


class ChoiceOut(BaseModel):
    """Base of the response choices: `completion_id` is left out of the JSON when it is None (logging off)."""

    # No return annotation: with `-> dict` the OpenAPI (serialization) schema would lose the fields.
    @model_serializer(mode="wrap")
    def _drop_absent_completion_id(self, handler):
        data = handler(self)
        if data.get("completion_id") is None:
            data.pop("completion_id", None)
        return data


Explanation = Annotated[list[TokenExplanationOut] | None,
                        Field(description="guidance.explain: one entry per generated token (in a stream, per chunk)")]


def explanation_out(entries, token_text) -> list[TokenExplanationOut] | None:
    """The engine's TokenExplanations as the API shows them (None when there are none: the field is omitted)."""
    if not entries:
        return None
    return [TokenExplanationOut(token=token_text(e.token_id), patient_logprob=e.patient_logprob,
                                doctor_logprobs=dict(e.doctor_logprobs), rule_logprob=e.rule_logprob, kl=e.kl,
                                beta_scale=e.beta_scale) for e in entries]


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    mean_kl_per_token: float | None = Field(
        None, description="guided requests: the rule's mean KL from the patient per generated token, in nats, over "
                          "every choice (what guidance.max_kl bounds step by step); null without guidance")

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, kl: KlTally | None = None) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            mean_kl_per_token=kl.mean if kl is not None else None,
        )


class KlTally:
    """The rule's KL summed over tokens, per choice, as the engine reports it (TokenEvent.kl_sum / kl_tokens)."""

    def __init__(self):
        self._choices: dict[int, tuple[float, int]] = {}

    def update(self, index: int, kl_sum: float | None, kl_tokens: int) -> None:
        if kl_sum is not None:
            self._choices[index] = (kl_sum, kl_tokens)

    def of(self, index: int) -> KlTally:
        """This choice's alone (continuous usage stats)."""
        one = KlTally()
        if index in self._choices:
            one._choices[index] = self._choices[index]
        return one

    @property
    def mean(self) -> float | None:
        tokens = sum(n for _, n in self._choices.values())
        return sum(s for s, _ in self._choices.values()) / tokens if tokens else None


FinishReasonOut = Literal["stop", "length", "abort"] | None


def now() -> int:
    return int(time.time())
