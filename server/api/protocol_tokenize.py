"""POST /tokenize and POST /detokenize: vLLM's request and response shapes (vllm/entrypoints/serve/tokenize)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from llmdoctor.server.api.protocol_chat import ChatMessage
from llmdoctor.server.api.protocol_common import StrictModel


class TokenizeRequest(BaseModel):
    """vLLM's two tokenize requests in one: `prompt` (text, as /v1/completions takes it) or `messages` (through
    the model's chat template, as /v1/chat/completions applies it)."""

    model_config = StrictModel

    model: str | None = Field(None, description="the patient or a patient adapter (they share the tokenizer)")
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = Field(
        False, description="add the tokenizer's special tokens (e.g. BOS) on top of the text or template; off, "
        "as the generation endpoints tokenise, so `count` is what the prompt costs there")
    add_generation_prompt: bool = Field(True, description="with `messages`: end with the assistant's turn opened")
    continue_final_message: bool = Field(False, description="with `messages`: leave the last message open")
    return_token_strs: bool = Field(False, description="also return each token's string")

    @field_validator("continue_final_message")
    @classmethod
    def _continue_or_prompt(cls, value: bool, info: ValidationInfo) -> bool:  # as /v1/chat/completions
        if value and info.data.get("add_generation_prompt"):
            raise ValueError("continue_final_message needs add_generation_prompt: false")
        return value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt (text) or messages (a chat), not both")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = StrictModel

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]] = Field(max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str
