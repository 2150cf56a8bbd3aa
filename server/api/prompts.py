"""Prompts -> token ids: plain text, token ids, chat messages through the tokenizer's template.

Also the context check: prompt plus max_tokens must fit `max_model_len`, with vLLM's wording.
The encode methods are plain blocking calls: the services run them off the event loop
(asyncio.to_thread). A prompt near --max-request-bytes of text takes seconds to tokenise (4 MB:
~4 s on one core; the Rust tokenizer releases the GIL), and /health must answer meanwhile.
"""

from __future__ import annotations

from jinja2 import TemplateError

from llmdoctor.server.errors import ContextOverflowError, InvalidRequestError


class PromptTokenizer:
    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = len(tokenizer)

    def encode_prompts(self, prompts: list[str] | list[list[int]]) -> list[list[int]]:
        """Text is tokenised without added special tokens (what the client wrote is what the model sees)."""
        encoded = []
        for i, prompt in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            ids = self.encode_text(prompt) if isinstance(prompt, str) else self.check_ids(prompt, param)
            if not ids:
                raise InvalidRequestError(f"{param} must not be empty", param)
            encoded.append(ids)
        return encoded

    def encode_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool, continue_final_message: bool,
        add_special_tokens: bool = False,
    ) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError(
                "this model has no chat template; use /v1/completions with a plain prompt", "messages"
            )
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
            )
        except TemplateError as exc:  # the template's own raise_exception(), e.g. roles that must alternate
            raise InvalidRequestError(f"the model's chat template refused these messages: {exc}", "messages") from None
        return self.encode_text(text, add_special_tokens)

    def check_context(self, prompt_len: int, max_tokens: int, prompt_param: str) -> None:
        """Raise ContextOverflowError (HTTP 400) when the request cannot fit the context."""
        limit = self.max_model_len
        if prompt_len >= limit:
            raise ContextOverflowError(
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{prompt_len} input tokens. Please reduce the length of the input.",
                prompt_param,
            )
        if prompt_len + max_tokens > limit:
            raise ContextOverflowError(
                f"'max_tokens' is too large: {max_tokens}. This model's maximum context length is {limit} "
                f"tokens and your request has {prompt_len} input tokens ({max_tokens} > {limit} - {prompt_len}).",
                "max_tokens",
            )

    def encode_text(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"{param} has token id {bad}; ids must be in [0, {self.vocab_size})", param)
        return list(ids)
