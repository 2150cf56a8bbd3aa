"""The service both text endpoints share: admit a call's choices, merge or collect their deltas,
and drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, field

from llmdoctor.server.api.choice_run import ChoiceDelta, ChoiceRun, ChoiceSpec
from llmdoctor.server.api.metrics import RequestTimer, ServerMetrics
from llmdoctor.server.engine.protocol import Engine, TokenExplanation, TokenLogprob
from llmdoctor.server.errors import EngineDeadError, InvalidRequestError

logger = logging.getLogger(__name__)

_END = object()


class GenerationService:
    """Admits choices into the engine, tracks them until they end, and drains them on shutdown."""

    def __init__(self, engine: Engine, tokenizer, metrics: ServerMetrics, request_timeout: float):
        self.engine = engine
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.draining = False
        self._active: set[ChoiceRun] = set()
        self._background: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(
        self, specs: list[ChoiceSpec], on_end: Callable[[ChoiceRun], None] | None = None
    ) -> list[ChoiceRun]:
        """Admit every choice (waiting for each one's first event); on any failure abort them all.
        `on_end(run)` is called when an admitted choice ends, however it ends (not for a refused call)."""
        if self.draining:
            raise EngineDeadError("the server is shutting down and admits no new requests")
        self.check_capacity(len(specs))
        arrival = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        runs = [ChoiceRun(self, spec, deadline, RequestTimer(self.metrics, arrival)) for spec in specs]
        self._track(runs)
        # Counted per choice: each choice's prompt is prefilled by the engine.
        self.metrics.prompt_tokens.inc(sum(len(s.request.prompt_token_ids) for s in specs))
        try:
            await _admit_all(runs)
        except BaseException:
            close_runs(runs)
            raise
        for run in runs:
            run.on_end = on_end
        return runs

    def check_capacity(self, choices: int) -> None:
        """A call whose choices outnumber what the engine can ever hold at once (running + waiting)
        would get a 503 on an idle server too, and clients retry 503s: refuse it as a 400 instead."""
        stats = self.engine.stats()
        capacity = stats.max_batch + stats.max_queue
        if choices > capacity:
            raise InvalidRequestError(
                f"this request needs {choices} choices (n times the number of prompts), more than this server "
                f"can ever hold at once: {capacity} (--max-batch {stats.max_batch} + --max-queue {stats.max_queue}); "
                "lower n or send fewer prompts per call",
                "n",
            )

    async def drain(self, grace_seconds: float) -> None:
        """Stop admitting; let running choices finish for `grace_seconds`; then abort the rest, which
        end with finish_reason 'abort' (a final chunk and [DONE] for streams)."""
        self.draining = True
        if await _wait(self._idle, grace_seconds):
            return
        logger.warning("shutdown grace of %g s over: aborting %d request(s)", grace_seconds, len(self._active))
        for run in list(self._active):
            run.cut()
        if not await _wait(self._idle, 10.0):
            logger.error("%d request(s) did not end after abort", len(self._active))

    def spawn(self, coro: Coroutine) -> None:
        """Run `coro` detached from the caller, so a cancelled request's cleanup still happens."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, run: ChoiceRun) -> None:
        self._active.discard(run)
        if not self._active:
            self._idle.set()

    def _track(self, runs: list[ChoiceRun]) -> None:
        self._active.update(runs)
        self._idle.clear()


def close_runs(runs: list[ChoiceRun]) -> None:
    """Abort whatever is unfinished (idempotent); for streams that may never have started."""
    for run in runs:
        run.close()


async def _admit_all(runs: list[ChoiceRun]) -> None:
    if len(runs) == 1:  # the common case, without a task per choice
        await runs[0].admit()
        return
    try:
        async with asyncio.TaskGroup() as group:
            for run in runs:
                group.create_task(run.admit())
    except BaseExceptionGroup as failed:  # report the first failure as the request's error
        raise failed.exceptions[0] from None


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
        return True
    except TimeoutError:
        return False


async def merge_deltas(runs: list[ChoiceRun]) -> AsyncIterator[ChoiceDelta]:
    """All choices' deltas in arrival order; closing this iterator aborts every unfinished choice."""
    if len(runs) == 1:
        async for delta in runs[0].deltas():
            yield delta
        return
    queue: asyncio.Queue = asyncio.Queue()
    pumps = [asyncio.create_task(_pump(run, queue)) for run in runs]
    try:
        remaining = len(pumps)
        while remaining:
            item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for pump in pumps:
            pump.cancel()
        close_runs(runs)


async def _pump(run: ChoiceRun, queue: asyncio.Queue) -> None:
    try:
        async for delta in run.deltas():
            queue.put_nowait(delta)
        queue.put_nowait(_END)
    except Exception as exc:  # handed to the consumer, which raises it as the request's error
        queue.put_nowait(exc)


@dataclass
class CollectedChoice:
    """A finished choice, for the non-streaming responses."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text_offsets: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    explanation: list[TokenExplanation] = field(default_factory=list)
    kl_sum: float | None = None
    kl_tokens: int = 0

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.logprobs.extend(delta.logprobs)
        self.text_offsets.extend(delta.text_offsets)
        self.explanation.extend(delta.explanation)
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.completion_tokens = delta.completion_tokens
        if delta.kl_sum is not None:
            self.kl_sum, self.kl_tokens = delta.kl_sum, delta.kl_tokens


async def collect_choices(runs: list[ChoiceRun]) -> list[CollectedChoice]:
    """Run every choice to its end; choices in index order."""
    choices = {run.spec.index: CollectedChoice(run.spec.index) for run in runs}
    async with aclosing(merge_deltas(runs)) as deltas:
        async for delta in deltas:
            choices[delta.index].add(delta)
    return [choices[i] for i in sorted(choices)]
