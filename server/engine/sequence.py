"""Per-request decode state held by an engine, and how its events reach the asyncio side."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llmdoctor.server.engine.protocol import FinishReason, GenerateRequest, TokenEvent, TokenExplanation, TokenLogprob


@dataclass(eq=False)  # identity semantics: held in deques and dicts
class Sequence:
    request: GenerateRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    seed: int  # the request's seed, or a random one; with the position it fixes each draw (sampling.py)
    stop_ids: frozenset[int]
    doctors: tuple[str, ...]  # active doctors (beta != 0), in guidance order
    betas: tuple[float, ...]  # the active doctors' betas, in `doctors` order
    rule_alpha: float  # the patient's weight in the rule (Guidance.rule_alpha), fixed for the request
    pinned: tuple[str, ...] = ()  # adapter names admission pinned for it (Admission.admit)
    grammar: object | None = None  # its xgrammar GrammarMatcher under response_format (structured_output.py)
    output: list[int] = field(default_factory=list)
    admitted: bool = False
    finished: bool = False
    kl_sum: float = 0.0  # guided requests: the rule's KL from the patient, summed over the output's tokens

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def prefix(self) -> tuple[int, ...]:
        """Prompt and output so far: what a joining (or restarted) row prefills."""
        return tuple(self.request.prompt_token_ids) + tuple(self.output)

    def emit(self, tokens: tuple[int, ...], logprobs: tuple[TokenLogprob, ...] | None = None,
             finish: FinishReason | None = None, error: str | None = None,
             explanation: tuple[TokenExplanation, ...] | None = None) -> None:
        """Hand an event to the request's asyncio queue from any thread."""
        guided = not self.request.guidance.is_plain
        event = TokenEvent(
            request_id=self.id,
            token_ids=tokens,
            logprobs=logprobs,
            finish_reason=finish,
            prompt_tokens=len(self.request.prompt_token_ids),
            completion_tokens=len(self.output),
            error=error,
            explanation=explanation,
            kl_sum=self.kl_sum if guided else None,
            kl_tokens=len(self.output) if guided else 0,
        )
        self.finished = self.finished or finish is not None
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed (process exiting): nobody is listening
            pass

    def finish_reason(self, token: int) -> FinishReason | None:
        """Whether the token just appended ends the request."""
        if token in self.stop_ids:
            return "stop"
        if len(self.output) >= self.request.sampling.max_tokens:
            return "length"
        return None
