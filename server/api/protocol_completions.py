"""POST /v1/completions: OpenAI's request/response shapes, validating and converting themselves."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from typing_extensions import TypeAliasType

from llmdoctor.server.api.protocol_common import (
    MAX_LOGPROBS,
    ChoiceOut,
    CompletionId,
    FinishReasonOut,
    SamplingFields,
    Explanation,
    UsageInfo,
    now,
)
from llmdoctor.server.engine.protocol import SamplingParams

PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of token-id lists"
TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
# What a request may send (OpenAI's four shapes, lists non-empty): declared in openapi.json;
# `normalise_prompt` is the check, and turns it into one list of prompts.
PromptInput = TypeAliasType(
    "PromptInput",
    str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)],
)


def normalise_prompt(value: Any) -> list[str] | list[list[int]]:
    """One list of prompts, each text or token ids; raises ValueError naming the accepted shapes."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_token_id(v) for v in value):
            return [value]
        if all(isinstance(v, list) and v and all(_is_token_id(t) for t in v) for v in value):
            return value
    raise ValueError(f"must be {PROMPT_SHAPES}, non-empty")


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class CompletionRequest(SamplingFields):
    prompt: list[str] | list[list[int]] = Field(description=f"{PROMPT_SHAPES}; lists non-empty")
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt", mode="before", json_schema_input_type=PromptInput)
    @classmethod
    def _normalise_prompt(cls, value: Any) -> Any:
        return normalise_prompt(value)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported by this server; leave it false")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value != info.data.get("n", 1):
            raise ValueError("best_of other than n is not supported by this server")
        return value

    def requested_max_tokens(self, prompt_len: int, max_model_len: int) -> int:
        return self.max_tokens

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        return self.sampling_params(max_tokens, self.logprobs)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(ChoiceOut):
    index: int
    completion_id: CompletionId = None
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReasonOut = None
    explanation: Explanation = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class CompletionStreamResponse(CompletionResponse):
    """One SSE chunk; OpenAI streams the same object type as the full response."""
