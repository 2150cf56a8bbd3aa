"""Admission, shared by every engine: the checks a request passes before it is accepted (with the errors
the API turns into 4xx), the in-flight count the queue limit reads, and the adapters a request pins
while it runs. An engine calls `admit` when a request arrives and `finish` when it ends, whatever ended it.
"""

from __future__ import annotations

import threading

from llmdoctor.server.engine.adapter_table import AdapterTable, wanted_adapters
from llmdoctor.server.engine.protocol import GenerateRequest
from llmdoctor.server.errors import ContextOverflowError, EngineDeadError, InvalidRequestError, QueueFullError


class Admission:
    """Thread-safe: the event loop admits, an engine thread may finish."""

    def __init__(self, table: AdapterTable, max_batch: int, max_queue: int):
        self.table = table
        self.max_batch, self.max_queue = max_batch, max_queue
        self.accepting = False  # the engine opens it once started and closes it to shut down
        self._lock = threading.Lock()
        self._inflight: set[str] = set()

    def admit(self, request: GenerateRequest, vocab_size: int, max_model_len: int,
              doctors_on_patient_base: bool) -> list[str]:
        """Refuse what cannot run; else count the request in and pin its adapters. Returns the names pinned:
        hand them to `finish`."""
        if not self.accepting:
            raise EngineDeadError("the engine is not running (starting up or shutting down)")
        check_request(request, vocab_size, max_model_len)
        check_ratio_guidance(request, doctors_on_patient_base)
        wanted = wanted_adapters(request)
        with self._lock:
            if request.request_id in self._inflight:
                raise InvalidRequestError(f"request id '{request.request_id}' is already running", "request_id")
            # running + waiting: an n > max_queue call on an idle engine is not refused
            if len(self._inflight) >= self.max_batch + self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests); retry later")
            self.table.pin(wanted)  # NotFoundError for an adapter that is not loaded
            self._inflight.add(request.request_id)
        return [name for name, _, _ in wanted]

    def finish(self, request_id: str, pinned: list[str]) -> list[str]:
        """The request is over: returns the leaving adapters nobody uses now. The engine frees each, then calls
        `table.done(name)`."""
        with self._lock:
            if request_id not in self._inflight:
                return []  # finished already (an abort racing the last token)
            self._inflight.discard(request_id)
        return self.table.unpin(pinned)

    def inflight(self) -> list[str]:
        with self._lock:
            return list(self._inflight)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._inflight

    def __len__(self) -> int:
        return len(self._inflight)


def check_request(request: GenerateRequest, vocab_size: int, max_model_len: int) -> None:
    prompt = request.prompt_token_ids
    if not prompt:
        raise InvalidRequestError("the prompt must contain at least one token", "prompt")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise InvalidRequestError(f"prompt token ids must be in [0, {vocab_size})", "prompt")
    for token, _ in request.sampling.logit_bias:
        if not 0 <= token < vocab_size:
            raise InvalidRequestError(f"logit_bias token id {token} is out of the vocabulary [0, {vocab_size})",
                                      "logit_bias")
    total = len(prompt) + request.sampling.max_tokens
    if total > max_model_len:
        raise ContextOverflowError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{total} tokens ({len(prompt)} in the prompt, {request.sampling.max_tokens} in the completion). "
            "Please reduce the prompt or max_tokens.",
            "max_tokens",
        )


def check_ratio_guidance(request: GenerateRequest, doctors_on_patient_base: bool) -> None:
    """A `ratio` doctor's term is beta * (log p_doctor - log p_base), its tilt away from its own base. The
    engines compute log p_base for free only where it is the request's patient distribution: the bare
    patient, with the doctors as LoRAs on the patient's base. Elsewhere the base's log-probs would need a
    row of their own, which the engines do not run yet: refused, rather than a silently different rule."""
    for i, doctor in enumerate(request.guidance.doctors):
        if doctor.mode != "ratio" or doctor.beta == 0.0:
            continue
        if request.adapter:
            raise InvalidRequestError(
                f"guidance.doctors[{i}].mode 'ratio' needs the bare patient as the model, not the patient adapter "
                f"'{request.adapter}' (the doctor's tilt is measured against the patient it was trained on); use "
                "mode 'product' with a patient adapter", f"guidance.doctors[{i}].mode")
        if not doctors_on_patient_base:
            raise InvalidRequestError(
                f"guidance.doctors[{i}].mode 'ratio' needs doctors on the patient's own base; this server runs its "
                "doctors on a separate --doctor-base; use mode 'product'", f"guidance.doctors[{i}].mode")
