"""POST /v1/chat/completions: messages through the chat template, OpenAI chat objects (or SSE chunks) out."""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from llmdoctor.server.api.choice_run import ChoiceDelta, ChoiceRun, ChoiceSpec
from llmdoctor.server.api.completion_records import ChoiceRecorder
from llmdoctor.server.api.detokenizer import TokenTexts
from llmdoctor.server.api.generation import GenerationService, close_runs, collect_choices, merge_deltas
from llmdoctor.server.api.planning import plan_choices, prompt_tokens_of
from llmdoctor.server.api.prompts import PromptTokenizer
from llmdoctor.server.api.protocol_chat import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    ChatStreamChoice,
    DeltaMessage,
    TokenLogprobOut,
    TopLogprob,
)
from llmdoctor.server.api.protocol_common import KlTally, UsageInfo, explanation_out, now
from llmdoctor.server.api.serving_models import ModelsService
from llmdoctor.server.api.sse import DONE, EventStream, sse_data, sse_error
from llmdoctor.server.engine.protocol import TokenLogprob
from llmdoctor.server.feedback.completion_log import CompletionLog


def chat_logprobs(logprobs: Sequence[TokenLogprob], token_text: TokenTexts) -> ChatLogprobs:
    """OpenAI's chat shape: per token its text, logprob, UTF-8 bytes and the top alternatives."""

    def entry(token_id: int, logprob: float) -> TopLogprob:
        text = token_text(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    content = []
    for lp in logprobs:
        sampled = entry(lp.token_id, lp.logprob)
        top = [entry(t, v) for t, v in lp.top]
        content.append(TokenLogprobOut(**sampled.model_dump(), top_logprobs=top))
    return ChatLogprobs(content=content)


class ChatService:
    def __init__(
        self, models: ModelsService, prompts: PromptTokenizer, generation: GenerationService, token_text: TokenTexts,
        log: CompletionLog | None = None,
    ):
        self.models = models
        self.prompts = prompts
        self.generation = generation
        self.token_text = token_text
        self.log = log  # None: completions are not logged, and choices carry no completion_id

    async def complete(self, body: ChatCompletionRequest) -> ChatCompletionResponse:
        request_id, specs, recorder = await self._plan(body)
        runs = await self.generation.start(specs, recorder.record if recorder else None)
        collected = await collect_choices(runs)
        completion_ids = {spec.index: spec.completion_id for spec in specs}
        choices = [
            ChatChoice(
                index=c.index,
                completion_id=completion_ids[c.index],
                message=ChatMessageOut(content=c.text),
                logprobs=self._logprobs(body, c.logprobs),
                finish_reason=c.finish_reason,
                explanation=explanation_out(c.explanation, self.token_text),
            )
            for c in collected
        ]
        kl = KlTally()
        for c in collected:
            kl.update(c.index, c.kl_sum, c.kl_tokens)
        usage = UsageInfo.of(prompt_tokens_of(specs, body.n), sum(c.completion_tokens for c in collected), kl)
        return ChatCompletionResponse(id=request_id, model=self._model_name(body), choices=choices, usage=usage)

    async def stream(self, body: ChatCompletionRequest) -> EventStream:
        """Admits the choices first, so queue-full and bad-request errors still get an HTTP status."""
        request_id, specs, recorder = await self._plan(body)
        runs = await self.generation.start(specs, recorder.record if recorder else None)
        events = self._events(body, request_id, specs, runs)
        return EventStream(events, on_close=partial(close_runs, runs))

    async def _plan(self, body: ChatCompletionRequest) -> tuple[str, list[ChoiceSpec], ChoiceRecorder | None]:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        recorder = None
        if self.log is not None:
            messages = [m.model_dump(mode="json", exclude_none=True) for m in body.messages]
            recorder = ChoiceRecorder.of(self.log, "chat", request_id, body, [messages], self._model_name(body))
        ids = await asyncio.to_thread(  # template + tokenizer are CPU work: off the event loop
            self.prompts.encode_chat, body.template_messages(), body.add_generation_prompt, body.continue_final_message
        )
        specs = plan_choices(body, [ids], "messages", request_id, self.models, self.prompts, recorder is not None)
        return request_id, specs, recorder

    async def _events(
        self, body: ChatCompletionRequest, request_id: str, specs: list[ChoiceSpec], runs: list[ChoiceRun]
    ) -> AsyncGenerator[str, None]:
        created, model = now(), self._model_name(body)

        def chunk(choices: list[ChatStreamChoice], usage: UsageInfo | None = None) -> str:
            payload = ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, usage=usage)
            return sse_data(payload.model_dump_json())

        completion_tokens: dict[int, int] = {}
        prompt_tokens = {spec.index: len(spec.request.prompt_token_ids) for spec in specs}
        every = body.include_usage_in_every_chunk  # vLLM's continuous_usage_stats: each choice's usage so far
        kl = KlTally()

        def usage_of(index: int, completion: int) -> UsageInfo | None:
            return UsageInfo.of(prompt_tokens[index], completion, kl.of(index)) if every else None

        try:
            # OpenAI opens every choice with the role (ours with its completion_id), then content, then a finish chunk.
            for spec in specs:
                role = ChatStreamChoice(index=spec.index, completion_id=spec.completion_id,
                                        delta=DeltaMessage(role="assistant", content=""))
                yield chunk([role], usage_of(spec.index, 0))
            async with aclosing(merge_deltas(runs)) as deltas:
                async for delta in deltas:
                    completion_tokens[delta.index] = delta.completion_tokens
                    kl.update(delta.index, delta.kl_sum, delta.kl_tokens)
                    for choice in self._stream_choices(body, delta):
                        yield chunk([choice], usage_of(delta.index, delta.completion_tokens))
            if body.include_usage_in_stream:
                yield chunk([], UsageInfo.of(prompt_tokens_of(specs, body.n), sum(completion_tokens.values()), kl))
        except Exception as exc:
            yield sse_error(exc)
        yield DONE

    def _stream_choices(self, body: ChatCompletionRequest, delta: ChoiceDelta) -> list[ChatStreamChoice]:
        """A content chunk when there is text (or logprobs), and a separate finish chunk at the end."""
        out = []
        if delta.text or delta.logprobs or delta.explanation:
            out.append(
                ChatStreamChoice(
                    index=delta.index,
                    delta=DeltaMessage(content=delta.text),
                    logprobs=self._logprobs(body, delta.logprobs),
                    explanation=explanation_out(delta.explanation, self.token_text),
                )
            )
        if delta.finish_reason is not None:
            out.append(ChatStreamChoice(index=delta.index, delta=DeltaMessage(), finish_reason=delta.finish_reason))
        return out

    def _logprobs(self, body: ChatCompletionRequest, logprobs: Sequence[TokenLogprob]) -> ChatLogprobs | None:
        return chat_logprobs(logprobs, self.token_text) if body.logprobs else None

    def _model_name(self, body: ChatCompletionRequest) -> str:
        return body.model or self.models.patient
