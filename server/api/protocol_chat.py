"""POST /v1/chat/completions: OpenAI's request/response shapes, validating and converting themselves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_serializer

from llmdoctor.server.api.protocol_common import (
    MAX_LOGPROBS,
    ChoiceOut,
    CompletionId,
    FinishReasonOut,
    SamplingFields,
    StrictModel,
    Explanation,
    UsageInfo,
    now,
)
from llmdoctor.server.engine.protocol import SamplingParams


def join_text_parts(value: Any) -> Any:
    """OpenAI content may be a list of parts; text parts are joined, anything else is refused."""
    if not isinstance(value, list):
        return value
    texts = []
    for i, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"content part {i} has type {kind!r}; only {{'type': 'text', 'text': ...}} is supported")
        texts.append(part["text"])
    return "".join(texts)


class TextContentPart(BaseModel):
    """The one content part served: OpenAI's `{"type": "text", "text": ...}` (declared for openapi.json)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = StrictModel

    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(description="a string, or a list of text parts (joined)")
    name: str | None = None

    @field_validator("content", mode="before", json_schema_input_type=str | list[TextContentPart])
    @classmethod
    def _join_parts(cls, value: Any) -> Any:
        return join_text_parts(value)

    def for_template(self) -> dict[str, str]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("continue_final_message")
    @classmethod
    def _continue_or_prompt(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("add_generation_prompt"):
            raise ValueError("continue_final_message needs add_generation_prompt: false")
        return value

    def template_messages(self) -> list[dict[str, str]]:
        return [m.for_template() for m in self.messages]

    def requested_max_tokens(self, prompt_len: int, max_model_len: int) -> int:
        """max_completion_tokens, else max_tokens, else the rest of the context (vLLM's default)."""
        asked = self.max_completion_tokens or self.max_tokens
        return asked if asked is not None else max(1, max_model_len - prompt_len)

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        return self.sampling_params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None
    refusal: list[TokenLogprobOut] | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(ChoiceOut):
    index: int
    completion_id: CompletionId = None
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReasonOut = None
    explanation: Explanation = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None


class DeltaMessage(BaseModel):
    """Only the fields that changed, as OpenAI streams them (`{"role": ...}` once, then `{"content": ...}`)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    # No return annotation: with `-> dict` the OpenAPI (serialization) schema would lose the fields.
    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatStreamChoice(ChoiceOut):
    index: int
    completion_id: CompletionId = None
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReasonOut = None
    explanation: Explanation = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None
