"""POST /tokenize and /detokenize: text or chat messages to the token ids a completion would see, and back."""

from __future__ import annotations

import asyncio

from llmdoctor.server.api.prompts import PromptTokenizer
from llmdoctor.server.api.protocol_tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from llmdoctor.server.api.serving_models import ModelsService


class TokenizeService:
    def __init__(self, models: ModelsService, prompts: PromptTokenizer):
        self.models = models
        self.prompts = prompts

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        self.models.resolve_adapter(body.model)  # 404 for an unknown model, as the generation endpoints
        return await asyncio.to_thread(self._tokenize, body)  # CPU work, up to --max-request-bytes: off the loop

    def _tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        if body.messages is not None:
            ids = self.prompts.encode_chat([m.for_template() for m in body.messages], body.add_generation_prompt,
                                           body.continue_final_message, add_special_tokens=body.add_special_tokens)
        else:
            ids = self.prompts.encode_text(body.prompt, add_special_tokens=body.add_special_tokens)
        strs = self.prompts.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.prompts.max_model_len, tokens=ids,
                                token_strs=strs)

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        self.models.resolve_adapter(body.model)
        return await asyncio.to_thread(self._detokenize, body)

    def _detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        ids = self.prompts.check_ids(body.tokens, "tokens")
        return DetokenizeResponse(prompt=self.prompts.tokenizer.decode(ids, skip_special_tokens=False))
