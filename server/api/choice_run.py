"""One choice = one engine request: token events in, text deltas out.

Detokenises incrementally, finds stop strings, enforces the request deadline, and aborts the
engine request whenever it ends early (stop string, timeout, client gone, shutdown) so its slot is
freed at once. Knows nothing about HTTP or the OpenAI shapes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmdoctor.server.api.detokenizer import IncrementalDetokenizer
from llmdoctor.server.api.errors import RequestTimeoutError
from llmdoctor.server.api.metrics import RequestTimer
from llmdoctor.server.api.stop_strings import StopStringMatcher
from llmdoctor.server.engine.protocol import GenerateRequest, TokenEvent, TokenExplanation, TokenLogprob
from llmdoctor.server.errors import LLMDoctorError

if TYPE_CHECKING:
    from llmdoctor.server.api.generation import GenerationService

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoiceSpec:
    index: int  # the choice's index in the response (prompt_index * n + i)
    request: GenerateRequest
    stops: tuple[str, ...] = ()
    completion_id: str | None = None  # its row in the completion log; None when completions are not logged


@dataclass(frozen=True)
class ChoiceDelta:
    """What one engine event added to one choice. `finish_reason` is set on the choice's last delta."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...]  # empty unless the request asked for logprobs
    text_offsets: tuple[int, ...]  # where each of those tokens starts in the choice's text
    finish_reason: str | None
    completion_tokens: int  # cumulative
    prompt_tokens: int
    explanation: tuple[TokenExplanation, ...] = ()  # under guidance.explain: one per token this delta adds
    kl_sum: float | None = None  # guided: the rule's KL summed over the first kl_tokens tokens (cumulative)
    kl_tokens: int = 0


class ChoiceRun:
    def __init__(self, owner: GenerationService, spec: ChoiceSpec, deadline: float, timer: RequestTimer):
        self.spec = spec
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.text_pieces: list[str] = []  # the text of the deltas handed out
        self.token_ids: list[int] = []  # every token generated (a stop string's tokens included, as counted)
        self.on_end: Callable[[ChoiceRun], None] | None = None  # called once by close(): the completion log
        self._owner = owner
        self._deadline = deadline  # event-loop time
        self._timer = timer
        self._detok = IncrementalDetokenizer(owner.tokenizer, spec.request.prompt_token_ids)
        self._stops = StopStringMatcher(spec.stops)
        self._events: AsyncIterator[TokenEvent] | None = None
        self._first: TokenEvent | None = None
        self._engine_done = False  # the engine has finished or dropped the request: nothing to abort
        self._closed = False
        self._text_len = 0
        self._kl: tuple[float | None, int] = (None, 0)  # the latest (kl_sum, kl_tokens) the engine reported

    @property
    def request_id(self) -> str:
        return self.spec.request.request_id

    async def admit(self) -> None:
        """Submit and wait for the first event: queue-full and bad-request errors surface here."""
        self._events = aiter(self._owner.engine.generate(self.spec.request))
        self._first = await self._next_event()

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """The choice's deltas until it finishes; closing the iterator early aborts the request."""
        try:
            event, self._first = self._first, None
            while True:
                delta = self._apply(event)
                if delta is not None:
                    yield delta
                if self.finish_reason is not None:
                    return
                event = await self._next_event()
        finally:
            self.close()

    def cut(self) -> None:
        """Shutdown: abort now; the engine's final event ends the choice with finish_reason 'abort'."""
        self._owner.spawn(self._owner.engine.abort(self.request_id))

    def close(self) -> None:
        """Idempotent: abort the engine request unless it already ended, and stop tracking."""
        if self._closed:
            return
        self._closed = True
        if not self._engine_done:
            logger.debug("aborting %s (finish_reason %s)", self.request_id, self.finish_reason)
            self._owner.spawn(self._abort_engine_request())
        if self.completion_tokens:
            self._timer.finished()
        if self.on_end is not None:
            self.on_end(self)
        self._owner.forget(self)

    async def _abort_engine_request(self) -> None:
        try:
            await self._owner.engine.abort(self.request_id)
            if hasattr(self._events, "aclose"):
                await self._events.aclose()
        except (LLMDoctorError, RuntimeError) as exc:  # already gone, or its generator still unwinding
            logger.debug("abort %s: %s", self.request_id, exc)

    async def _next_event(self) -> TokenEvent:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await anext(self._events)
        except StopAsyncIteration:  # the engine ended the stream without a final event: treat as aborted
            self._engine_done = True
            return TokenEvent(self.request_id, (), finish_reason="abort")
        except TimeoutError:
            raise RequestTimeoutError(
                f"request exceeded --request-timeout ({self._owner.request_timeout:g} s) and was aborted"
            ) from None

    def _apply(self, event: TokenEvent) -> ChoiceDelta | None:
        """Fold one engine event into the choice; None when it changes nothing the client sees."""
        if event.error:
            self._engine_done = True
            raise LLMDoctorError(f"the engine failed this request: {event.error}")
        if event.token_ids:
            self._timer.tokens(len(event.token_ids))
            self.completion_tokens += len(event.token_ids)
            self.token_ids.extend(event.token_ids)
        text, offsets = self._detokenize(event.token_ids)
        text, stopped = self._stops.feed(text)
        if event.finish_reason is not None:
            self._engine_done = True
        if stopped:
            self.finish_reason = "stop"
        elif event.finish_reason is not None:
            text += self._stops.flush()
            self.finish_reason = event.finish_reason
        logprobs = event.logprobs or ()
        explanation = event.explanation or ()
        kl_changed = event.kl_sum is not None and (event.kl_sum, event.kl_tokens) != self._kl
        if kl_changed:
            self._kl = (event.kl_sum, event.kl_tokens)
        if not text and not logprobs and not explanation and not kl_changed and self.finish_reason is None:
            return None
        if text:
            self.text_pieces.append(text)
        return ChoiceDelta(
            index=self.spec.index,
            text=text,
            logprobs=logprobs,
            text_offsets=offsets if logprobs else (),
            finish_reason=self.finish_reason,
            completion_tokens=self.completion_tokens,
            prompt_tokens=len(self.spec.request.prompt_token_ids),
            explanation=explanation,
            kl_sum=self._kl[0],
            kl_tokens=self._kl[1],
        )

    def _detokenize(self, token_ids: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        pieces, offsets = [], []
        for token_id in token_ids:
            offsets.append(self._text_len)
            piece = self._detok.add(token_id)
            self._text_len += len(piece)
            pieces.append(piece)
        return "".join(pieces), tuple(offsets)
