"""POST /v1/completions: prompts in, OpenAI completion objects (or SSE chunks) out."""

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
from llmdoctor.server.api.protocol_common import KlTally, UsageInfo, explanation_out, now
from llmdoctor.server.api.protocol_completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from llmdoctor.server.api.serving_models import ModelsService
from llmdoctor.server.api.sse import DONE, EventStream, sse_data, sse_error
from llmdoctor.server.engine.protocol import TokenLogprob
from llmdoctor.server.feedback.completion_log import CompletionLog


def completion_logprobs(
    logprobs: Sequence[TokenLogprob], offsets: Sequence[int], token_text: TokenTexts
) -> CompletionLogprobs:
    """OpenAI's legacy shape: parallel lists of tokens, their logprobs, top-k dicts and text offsets."""
    return CompletionLogprobs(
        tokens=[token_text(lp.token_id) for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[{token_text(t): v for t, v in lp.top} for lp in logprobs],
        text_offset=list(offsets),
    )


class CompletionsService:
    def __init__(
        self, models: ModelsService, prompts: PromptTokenizer, generation: GenerationService, token_text: TokenTexts,
        log: CompletionLog | None = None,
    ):
        self.models = models
        self.prompts = prompts
        self.generation = generation
        self.token_text = token_text
        self.log = log  # None: completions are not logged, and choices carry no completion_id

    async def complete(self, body: CompletionRequest) -> CompletionResponse:
        request_id, specs, recorder = await self._plan(body)
        runs = await self.generation.start(specs, recorder.record if recorder else None)
        collected = await collect_choices(runs)
        completion_ids = {spec.index: spec.completion_id for spec in specs}
        choices = [
            CompletionChoice(
                index=c.index,
                completion_id=completion_ids[c.index],
                text=c.text,
                logprobs=self._logprobs(body, c.logprobs, c.text_offsets),
                finish_reason=c.finish_reason,
                explanation=explanation_out(c.explanation, self.token_text),
            )
            for c in collected
        ]
        kl = KlTally()
        for c in collected:
            kl.update(c.index, c.kl_sum, c.kl_tokens)
        usage = UsageInfo.of(prompt_tokens_of(specs, body.n), sum(c.completion_tokens for c in collected), kl)
        return CompletionResponse(id=request_id, model=self._model_name(body), choices=choices, usage=usage)

    async def stream(self, body: CompletionRequest) -> EventStream:
        """Admits the choices first, so queue-full and bad-request errors still get an HTTP status."""
        request_id, specs, recorder = await self._plan(body)
        runs = await self.generation.start(specs, recorder.record if recorder else None)
        events = self._events(body, request_id, specs, runs)
        return EventStream(events, on_close=partial(close_runs, runs))

    async def _plan(self, body: CompletionRequest) -> tuple[str, list[ChoiceSpec], ChoiceRecorder | None]:
        request_id = f"cmpl-{uuid.uuid4().hex}"
        recorder = None
        if self.log is not None:  # each prompt's choices log their own prompt
            recorder = ChoiceRecorder.of(self.log, "completions", request_id, body, body.prompt, self._model_name(body))
        prompts = await asyncio.to_thread(self.prompts.encode_prompts, body.prompt)  # CPU work: off the loop
        specs = plan_choices(body, prompts, "prompt", request_id, self.models, self.prompts, recorder is not None)
        return request_id, specs, recorder

    async def _events(
        self, body: CompletionRequest, request_id: str, specs: list[ChoiceSpec], runs: list[ChoiceRun]
    ) -> AsyncGenerator[str, None]:
        created, model = now(), self._model_name(body)
        completion_tokens: dict[int, int] = {}
        prompt_tokens = {spec.index: len(spec.request.prompt_token_ids) for spec in specs}
        kl = KlTally()
        unnamed = {spec.index: spec.completion_id for spec in specs}  # popped by each choice's first chunk
        try:
            async with aclosing(merge_deltas(runs)) as deltas:
                async for delta in deltas:
                    completion_tokens[delta.index] = delta.completion_tokens
                    kl.update(delta.index, delta.kl_sum, delta.kl_tokens)
                    if not (delta.text or delta.logprobs or delta.explanation or delta.finish_reason):
                        continue  # only the KL tally moved (the vllm engine reports it after the tokens)
                    usage = None
                    if body.include_usage_in_every_chunk:  # this choice's usage so far, as vLLM counts it
                        usage = UsageInfo.of(prompt_tokens[delta.index], delta.completion_tokens, kl.of(delta.index))
                    chunk = CompletionStreamResponse(
                        id=request_id, created=created, model=model,
                        choices=[self._stream_choice(body, delta, unnamed.pop(delta.index, None))],
                        usage=usage,
                    )
                    yield sse_data(chunk.model_dump_json())
            if body.include_usage_in_stream:
                usage = UsageInfo.of(prompt_tokens_of(specs, body.n), sum(completion_tokens.values()), kl)
                chunk = CompletionStreamResponse(id=request_id, created=created, model=model, choices=[], usage=usage)
                yield sse_data(chunk.model_dump_json())
        except Exception as exc:
            yield sse_error(exc)
        yield DONE

    def _stream_choice(
        self, body: CompletionRequest, delta: ChoiceDelta, completion_id: str | None
    ) -> CompletionChoice:
        return CompletionChoice(
            index=delta.index,
            completion_id=completion_id,
            text=delta.text,
            logprobs=self._logprobs(body, delta.logprobs, delta.text_offsets),
            finish_reason=delta.finish_reason,
            explanation=explanation_out(delta.explanation, self.token_text),
        )

    def _logprobs(
        self, body: CompletionRequest, logprobs: Sequence[TokenLogprob], offsets: Sequence[int]
    ) -> CompletionLogprobs | None:
        if body.logprobs is None:
            return None
        return completion_logprobs(logprobs, offsets, self.token_text)

    def _model_name(self, body: CompletionRequest) -> str:
        return body.model or self.models.patient
