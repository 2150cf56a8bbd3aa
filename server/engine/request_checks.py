"""Checks every engine makes of a request before accepting it, with the errors the API turns into 400s."""

from __future__ import annotations

from llmdoctor.server.engine.protocol import GenerateRequest
from llmdoctor.server.errors import ContextOverflowError, InvalidRequestError


def check_request(request: GenerateRequest, vocab_size: int, max_model_len: int) -> None:
    prompt = request.prompt_token_ids
    if not prompt:
        raise InvalidRequestError("the prompt must contain at least one token", "prompt")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise InvalidRequestError(f"prompt token ids must be in [0, {vocab_size})", "prompt")
    total = len(prompt) + request.sampling.max_tokens
    if total > max_model_len:
        raise ContextOverflowError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{total} tokens ({len(prompt)} in the prompt, {request.sampling.max_tokens} in the completion). "
            "Please reduce the prompt or max_tokens.",
            "max_tokens",
        )
