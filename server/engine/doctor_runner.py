"""The doctor runner: a doctor base model plus any number of LoRA doctors (DESIGN.md, "Engines").

Each (request, doctor) pair is one row of a `RowBatch`, so doctor forwards are batched across
requests and every request keeps its own doctor KV cache. When the doctors are LoRAs on the
patient's own base, the engine passes the patient's RowBatch here (`shared`): doctor rows then ride
in the patient's forward and cost extra rows, not an extra pass over the weights. The vLLM engine
uses the same runner with its own RowBatch, stepping it in time with the tokens vLLM sampled.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from llmdoctor.server.engine.decode_rule import logprobs_from_logits
from llmdoctor.server.engine.lora_host import LoraHost
from llmdoctor.server.engine.row_batch import RowBatch, StepLogits, StepPlan


class DoctorRunner:
    def __init__(self, rows: RowBatch, shared: bool):
        self.rows = rows
        self.shared = shared  # True: rows are the patient's RowBatch

    @property
    def host(self) -> LoraHost:
        return self.rows.host

    @staticmethod
    def key(request_id: str, doctor: str) -> tuple[str, str, str]:
        return ("doctor", request_id, doctor)

    def join(self, plan: StepPlan, request_id: str, prompt: tuple[int, ...], doctors: Iterable[str]) -> None:
        """Plan prefill rows for a request's doctors (each doctor's adapter on its own row)."""
        for name in doctors:
            plan.join[self.key(request_id, name)] = (prompt, name)

    def feed(self, plan: StepPlan, request_id: str, token: int, doctors: Iterable[str]) -> None:
        """Plan the request's last sampled token into each of its doctor rows."""
        for name in doctors:
            plan.feed[self.key(request_id, name)] = token

    def step(self, plan: StepPlan) -> StepLogits | None:
        """Run a plan on the doctor rows (separate-base mode); None when there is nothing to run."""
        if not plan.join and not plan.feed:
            return None
        return self.rows.step(plan)

    def logprobs(self, result: StepLogits | None, requests: list[tuple[str, tuple[str, ...]]],
                 all_logprobs: torch.Tensor | None = None) -> torch.Tensor | None:
        """Every request's doctors' next-token log-probs in one gather, (R, D, V) with D the most doctors
        any request has; a request with fewer gets rows of 0 there (weigh them by beta 0). None when no
        request has a doctor (alpha-only guidance): `combine_logprobs` takes that as no doctor term.

        `all_logprobs`: the result's log-softmax when the caller has it already (shared mode: the patient's).
        """
        width = max((len(doctors) for _, doctors in requests), default=0)
        if width == 0:
            return None
        if all_logprobs is None:
            all_logprobs = logprobs_from_logits(result.logits)  # one log-softmax for every doctor row
        rows, valid = [], []
        for request_id, doctors in requests:
            indices = [result.index[self.key(request_id, name)] for name in doctors]
            rows.extend(indices + [0] * (width - len(indices)))
            valid.extend([True] * len(indices) + [False] * (width - len(indices)))
        device = all_logprobs.device
        gathered = all_logprobs.index_select(0, torch.tensor(rows, dtype=torch.long, device=device))
        gathered = gathered.view(len(requests), width, -1)
        # padding rows are someone else's (maybe NaN) row: zero them, so 0 * NaN cannot leak into this request
        mask = torch.tensor(valid, device=device).view(len(requests), width, 1)
        return gathered.masked_fill(~mask, 0.0)

    def row_keys(self, requests: Iterable[tuple[str, Iterable[str]]]) -> list[tuple[str, str, str]]:
        """The rows of (request id, doctors) pairs: what to remove when those requests end."""
        return [self.key(request_id, name) for request_id, doctors in requests for name in doctors]

    def leave(self, requests: Iterable[tuple[str, Iterable[str]]]) -> None:
        """Drop the doctor rows of (request id, doctors) pairs, in one cache compaction."""
        self.rows.remove(self.row_keys(requests))
