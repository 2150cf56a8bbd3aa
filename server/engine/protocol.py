"""The engine interface: plain, picklable messages in and out, token ids only.

The same objects cross a thread today and a Ray actor boundary later, so they are frozen
dataclasses of ints, floats, strings and tuples; nothing from FastAPI, HTTP or tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from llmdoctor.server.errors import InvalidRequestError

FinishReason = Literal["stop", "length", "abort"]
AdapterKind = Literal["patient", "doctor"]
# How a doctor enters the rule (README "Guidance"):
#   product: beta * log p_doctor                        (DESIGN.md's rule as written)
#   ratio:   beta * (log p_doctor - log p_patient)      (the doctor's tilt away from its base, the patient)
# A doctor trained as a LoRA on the patient is the patient plus a tilt, so `product` also sharpens the
# patient by (alpha + beta); `ratio` applies the tilt alone. It is product with alpha lowered by beta.
GuidanceMode = Literal["product", "ratio"]
GUIDANCE_MODES: tuple[GuidanceMode, ...] = ("product", "ratio")


@dataclass(frozen=True)
class DoctorWeight:
    name: str
    beta: float
    mode: GuidanceMode = "product"


# Accepted ranges (README "Guidance"; the API schemas carry the same bounds). The rule floors log-probs
# (decode_rule.LOGPROB_FLOOR), so within these bounds it is finite for any model output that is.
MAX_WEIGHT = 100.0  # |alpha|, |beta|: 100 x a log-prob already makes the rule a one-hot argmax
MIN_WEIGHT = 1e-6  # a non-zero weight smaller than this is a typo for 0 (and underflows float32 near 1e-45)
MAX_TEMPERATURE = 2.0  # OpenAI's and vLLM's limit (vLLM 0.32 refuses more)
MIN_TEMPERATURE = 1e-2  # vLLM's _MAX_TEMP: 0 < t < 0.01 is raised to 0.01 (logprobs / t would overflow)
MAX_TOP_K = 2**31 - 1  # vLLM keeps top_k in an int32 tensor; any value >= the vocabulary means off
MAX_BIAS = 100.0  # logit_bias values: OpenAI's range; vLLM clamps to it
MAX_PENALTY = 2.0  # presence/frequency: OpenAI's and vLLM's range [-2, 2]
MAX_REPETITION_PENALTY = 100.0  # vLLM takes any value > 0; beyond 100 a seen token is simply banned
MAX_KL = 100.0  # guidance.max_kl, nats per token: far above any KL a rule within MAX_WEIGHT reaches in practice
SEED_RANGE = (-(2**63), 2**64)  # torch.Generator.manual_seed's inclusive-exclusive range


def check_weight(value: float, param: str, lowest: float) -> None:
    """A rule weight is 0 (off) or of magnitude in [MIN_WEIGHT, MAX_WEIGHT], and not below `lowest`."""
    if not math.isfinite(value) or not (lowest <= value <= MAX_WEIGHT):
        raise InvalidRequestError(f"{param} must be a number in [{lowest:g}, {MAX_WEIGHT:g}], got {value}", param)
    if value != 0.0 and abs(value) < MIN_WEIGHT:
        raise InvalidRequestError(f"{param} must be 0 (off) or at least {MIN_WEIGHT:g} in magnitude, got {value}",
                                  param)


@dataclass(frozen=True)
class Guidance:
    """Per-request weights of DESIGN.md's rule: alpha * log p_patient + sum_i beta_i * log p_doctor_i,
    where a `ratio` doctor's term is beta_i * (log p_doctor_i - log p_patient) (`rule_alpha`).

    alpha: 0 or in [1e-6, 100]; each beta: 0 (off) or 1e-6 <= |beta| <= 100 (negative steers away from
    that doctor); alpha 0 needs at least one doctor with a non-zero beta.
    """

    alpha: float = 1.0
    doctors: tuple[DoctorWeight, ...] = ()
    # per generated token, what the patient, each doctor and the rule gave it, and the step's KL (TokenExplanation)
    explain: bool = False
    # a KL budget in nats per token: a step whose rule would move further from the patient has the rule's departure
    # from it (every beta, and alpha's distance from 1) scaled down by one factor until it fits (decode_rule.py)
    max_kl: float | None = None

    def __post_init__(self):
        check_weight(self.alpha, "guidance.alpha", 0.0)
        if self.max_kl is not None and not (0 <= self.max_kl <= MAX_KL):  # also refuses NaN
            raise InvalidRequestError(f"guidance.max_kl must be in [0, {MAX_KL:g}] nats per token, got {self.max_kl}",
                                      "guidance.max_kl")
        names = [d.name for d in self.doctors]
        for i, d in enumerate(self.doctors):
            check_weight(d.beta, f"guidance.doctors[{i}].beta", -MAX_WEIGHT)
            if d.mode not in GUIDANCE_MODES:
                raise InvalidRequestError(f"guidance.doctors[{i}].mode must be one of {', '.join(GUIDANCE_MODES)}, "
                                          f"got {d.mode!r}", f"guidance.doctors[{i}].mode")
        if len(set(names)) != len(names):
            raise InvalidRequestError(f"guidance.doctors names a doctor twice: {names}", "guidance.doctors")
        if self.alpha == 0.0 and not self.active:
            raise InvalidRequestError("guidance.alpha 0 needs a doctor with a non-zero beta (with no weight "
                                      "on any model every token would be equally likely)", "guidance.alpha")

    @property
    def active(self) -> tuple[DoctorWeight, ...]:
        """Doctors that change the output (beta 0 = off, costs nothing)."""
        return tuple(d for d in self.doctors if d.beta != 0.0)

    @property
    def rule_alpha(self) -> float:
        """The patient's weight in the rule as computed: alpha less the betas of the `ratio` doctors
        (beta * (log p_doctor - log p_patient) is beta * log p_doctor with beta moved off the patient)."""
        return self.alpha - sum(d.beta for d in self.active if d.mode == "ratio")

    @property
    def is_plain(self) -> bool:
        """True when the rule reduces to the patient's own distribution and nobody asked to see it: the engine
        then samples the patient directly, with no rule to compute or trace."""
        return self.alpha == 1.0 and not self.active and not self.explain


@dataclass(frozen=True)
class OutputFormat:
    """What a request's output must be (`response_format`; structured_output.py). `schema` is the JSON
    Schema as JSON text, for json_schema only."""

    kind: Literal["json_object", "json_schema"]
    schema: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    """What the engine needs to pick tokens. Stop *strings* are the service layer's job."""

    max_tokens: int
    temperature: float = 1.0  # 0 = greedy; in (0, 0.01) raised to 0.01; at most 2
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's eos unless ignore_eos
    ignore_eos: bool = False
    logprobs: int | None = None  # None = none; 0 = sampled token only; k = also the top k
    # what they do, and in which order: logit_adjust.py
    min_p: float = 0.0  # 0 = off
    min_tokens: int = 0  # EOS and stop_token_ids are impossible before this many tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), bias clamped to [-100, 100]
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off
    output_format: OutputFormat | None = None  # response_format json_object / json_schema (structured_output.py)

    def __post_init__(self):
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens")
        if not (0 <= self.temperature <= MAX_TEMPERATURE):  # also refuses NaN
            raise InvalidRequestError(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}",
                                      "temperature")
        if 0 < self.temperature < MIN_TEMPERATURE:  # as vLLM does, so both engines sample alike
            object.__setattr__(self, "temperature", MIN_TEMPERATURE)
        if not (0 < self.top_p <= 1):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if not (-1 <= self.top_k <= MAX_TOP_K):
            raise InvalidRequestError(f"top_k must be -1, 0 (off) or in [1, {MAX_TOP_K}], got {self.top_k}", "top_k")
        if self.seed is not None and not (SEED_RANGE[0] <= self.seed < SEED_RANGE[1]):
            raise InvalidRequestError(f"seed must be in [-2**63, 2**64), got {self.seed}", "seed")
        if self.logprobs is not None and not (0 <= self.logprobs <= 20):
            raise InvalidRequestError(f"logprobs must be between 0 and 20, got {self.logprobs}", "logprobs")
        if not (0 <= self.min_p <= 1):
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        if not (0 <= self.min_tokens <= self.max_tokens):
            raise InvalidRequestError(f"min_tokens must be in [0, max_tokens ({self.max_tokens})], got "
                                      f"{self.min_tokens}", "min_tokens")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (-MAX_PENALTY <= value <= MAX_PENALTY):
                raise InvalidRequestError(f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value}", name)
        if not (0 < self.repetition_penalty <= MAX_REPETITION_PENALTY):
            raise InvalidRequestError(f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY:g}], got "
                                      f"{self.repetition_penalty}", "repetition_penalty")
        if self.output_format is not None and self.min_tokens:
            raise InvalidRequestError("min_tokens cannot be combined with response_format: the grammar decides where "
                                      "the output may end (it allows only EOS once the JSON is complete)", "min_tokens")
        for token, bias in self.logit_bias:
            if not math.isfinite(bias):
                raise InvalidRequestError(f"logit_bias[{token}] must be a finite number, got {bias}", "logit_bias")


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    guidance: Guidance = Guidance()
    adapter: str | None = None  # a loaded patient adapter, or None for the bare patient
    # The caller forwards tokens as they come (an SSE stream). False: it only uses the finished
    # result, so a replicated engine may rerun the request elsewhere if its replica dies mid-way.
    streamed: bool = True


@dataclass(frozen=True)
class TokenLogprob:
    """Log-prob of the sampled token under the rule's re-normalised distribution, plus the top k."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenExplanation:
    """What the rule did at one generated token (`guidance.explain`). Log-probs are of the token drawn:
    `patient_logprob` and `doctor_logprobs` are each model's own (log-softmax of its logits), `rule_logprob`
    is that of the distribution it was drawn from (what `logprobs` reports); `kl` is the rule's KL from the
    patient at that step, in nats, and `beta_scale` the factor guidance.max_kl put on the rule's departure
    from the patient (1: within budget)."""

    token_id: int
    patient_logprob: float
    doctor_logprobs: tuple[tuple[str, float], ...]  # (doctor name, log-prob), in guidance order
    rule_logprob: float
    kl: float
    beta_scale: float = 1.0


@dataclass(frozen=True)
class TokenEvent:
    """New tokens for one request. The last event of a request has `finish_reason` set."""

    request_id: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative
    error: str | None = None  # set when the engine failed this request (finish_reason "abort")
    explanation: tuple[TokenExplanation, ...] | None = None  # one per token of token_ids, under guidance.explain
    # guided requests: the sum of the rule's per-step KL from the patient over the first `kl_tokens` output tokens
    # (cumulative; an engine may report it later than the tokens, in an event with no tokens)
    kl_sum: float | None = None
    kl_tokens: int = 0


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    kind: AdapterKind
    path: str
    base_model: str
    rank: int
    meta: dict = field(default_factory=dict)  # llmdoctor.json contents, if any


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    max_batch: int
    max_queue: int
    steps: int
    generated_tokens: int


class Engine(Protocol):
    """What every engine offers. `generate` may raise QueueFullError / InvalidRequestError / NotFoundError
    before yielding anything; afterwards errors arrive as a final event with `error` set."""

    model_name: str  # the patient's name, as /v1/models reports it and adapters' base_model must match
    doctor_base_name: str  # the base the doctor adapters must sit on (the patient's name by default)
    model_folder: Path  # the patient's transformers folder: the service layer loads the tokenizer from it
    max_model_len: int
    eos_token_ids: tuple[int, ...]

    @property
    def healthy(self) -> bool: ...  # the decode loop is alive and accepting work

    async def start(self) -> None: ...
    async def shutdown(self, grace_seconds: float = 10.0) -> None: ...
    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]: ...
    async def abort(self, request_id: str) -> None: ...
    async def load_adapter(self, name: str, path: str, kind: AdapterKind) -> AdapterInfo: ...
    async def unload_adapter(self, name: str) -> None: ...
    def adapters(self) -> list[AdapterInfo]: ...
    def stats(self) -> EngineStats: ...
