"""What the doctor rule did, carried from vLLM's engine core to the API: the side channel behind guidance.explain
and usage.mean_kl_per_token on the vllm engine.

vLLM's logits processor sees each step's distributions but not the token that will be drawn from them, nor the
request's id, and it has no way to add fields to vLLM's outputs. So the processor (in the engine-core process)
records each guided step in a `TraceBook`, keyed by the request id the API put in extra_args and by output
position, and the API (`TraceCollector`) takes the records with `collective_rpc`, telling the book which tokens
were drawn at those positions: the API has them from vLLM's outputs, which also holds under async scheduling,
where the processor's own view of the output holds placeholders. The book then gathers each token's log-probs.
One RPC per round serves every request waiting (vLLM runs it between two steps), so the cost does not grow with
the number of guided requests; a request's tokens reach its client without waiting for it, except under explain,
where the explanation travels with its tokens.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import torch

from llmdoctor.server.engine.guidance_trace import explanation, gather_trace
from llmdoctor.server.engine.protocol import TokenExplanation

logger = logging.getLogger(__name__)

TAKE_METHOD = "llmdoctor_take_traces"  # DoctorWorkerExtension's method
KEEP_SECONDS = 120.0  # how long a finished request's records wait for the API to take them

# What crosses the process boundary (plain data, for vLLM's msgpack): the API asks {request id: (first position,
# tokens drawn from there on)}, the book answers {request id: [(position, token, kl, scale, values or None)]} where
# values is a gather_trace row (explain only).
Wanted = dict[str, tuple[int, list[int]]]
Record = tuple[int, int, float, float, list[float] | None]


@dataclass
class _Step:
    kl: torch.Tensor  # 0-d, on the logits' device: read when taken, so recording costs no sync
    scale: torch.Tensor
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None  # explain: rule (V,), patient (V,), doctors


class TraceBook:
    """In the engine-core process: each guided request's recorded steps until the API takes them."""

    def __init__(self):
        self._steps: dict[str, dict[int, _Step]] = {}  # request id -> output position -> what the rule did
        self._closed: dict[str, float] = {}  # requests that left the batch -> when (insertion order = age)

    def open(self, trace: str) -> None:
        """A request joined the batch (or came back after a preemption: its records stay)."""
        self._steps.setdefault(trace, {})
        self._closed.pop(trace, None)

    def close(self, trace: str) -> None:
        """A request left the batch: its records wait KEEP_SECONDS for the API (its last token's take comes after)."""
        if trace in self._steps:
            self._closed.pop(trace, None)  # re-inserted: the dict's order stays the order of closing
            self._closed[trace] = time.monotonic()

    def record(self, trace: str, position: int, kl: torch.Tensor, scale: torch.Tensor,
               rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None) -> None:
        """A step of the rule for output position `position`. A later step at the same position replaces it: vLLM
        threw that sample away (a prompt's earlier chunk) and drew again."""
        steps = self._steps.get(trace)
        if steps is not None:
            steps[position] = _Step(kl, scale, rows)

    def take(self, wanted: Wanted) -> dict[str, list[Record]]:
        """The records at the positions the API names, with the tokens it says were drawn there; taken ones go."""
        self._purge()
        out: dict[str, list[Record]] = {}
        for trace, (start, tokens) in wanted.items():
            steps = self._steps.get(trace)
            if steps is None:
                continue
            records = []
            for position, token in enumerate(tokens, start):
                step = steps.pop(position, None)
                if step is not None:
                    records.append(self._resolve(position, token, step))
            out[trace] = [r for r in records if r is not None]
            if trace in self._closed and not steps:
                self._forget(trace)
        return out

    @staticmethod
    def _resolve(position: int, token: int, step: _Step) -> Record | None:
        kl, scale = float(step.kl), float(step.scale)
        if not (math.isfinite(kl) and math.isfinite(scale)):  # a row the processor blamed: nothing to show
            return None
        values = None
        if step.rows is not None:
            rule, patient, doctors = step.rows
            values = gather_trace(torch.tensor([token]), rule[None], patient[None],
                                  None if doctors is None else doctors[None], step.kl[None], step.scale[None])[0].tolist()
            if not all(math.isfinite(v) for v in values[:4]):
                values = None
        return position, token, kl, scale, values

    def _purge(self) -> None:
        now = time.monotonic()
        for trace, closed_at in list(self._closed.items()):
            if now - closed_at < KEEP_SECONDS:
                break
            self._forget(trace)

    def _forget(self, trace: str) -> None:
        self._steps.pop(trace, None)
        self._closed.pop(trace, None)

    def __len__(self) -> int:
        return len(self._steps)


class TraceCollector:
    """On the API side (vLLM's event loop): takes records for every waiting request in one RPC per round."""

    def __init__(self, rpc: Callable[[str, tuple], Awaitable[list]]):
        self._rpc = rpc  # AsyncLLM.collective_rpc
        self._wanted: Wanted = {}
        self._waiters: dict[str, asyncio.Future] = {}
        self._round: asyncio.Task | None = None

    async def take(self, trace: str, start: int, tokens: list[int]) -> list[Record]:
        """The records of output positions start .. start + len(tokens) - 1 (those the book has)."""
        future = asyncio.get_running_loop().create_future()
        self._wanted[trace] = (start, list(tokens))
        self._waiters[trace] = future
        if self._round is None or self._round.done():
            self._round = asyncio.create_task(self._rounds())
        return await future

    async def _rounds(self) -> None:
        while self._wanted:
            wanted, waiters = self._wanted, self._waiters
            self._wanted, self._waiters = {}, {}
            try:
                answers = await self._rpc(TAKE_METHOD, (wanted,))
            except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                for future in waiters.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            # one answer per worker; with tensor parallelism every rank keeps a copy: the first that has it
            for trace, future in waiters.items():
                found = next((a[trace] for a in answers if a and trace in a), [])
                if not future.done():
                    future.set_result(found)


def explanations(records: list[Record], doctors: tuple[str, ...]) -> tuple[TokenExplanation, ...]:
    return tuple(explanation(token, values, doctors) for _, token, _, _, values in records if values is not None)
