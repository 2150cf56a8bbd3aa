"""What the completion log keeps of a served request: one record per choice, made when the choice ends.

A `ChoiceRecorder` is built once per request, where it enters (prompt, model, guidance and sampling
turned into JSON there); its `record` is each admitted ChoiceRun's `on_end`, which adds the choice's
own text, token ids and end, and queues the record (server/feedback/completion_log.py writes it off
the event loop). A choice that did not end by itself (client gone, timeout, shutdown, engine error)
is kept as "aborted", with what it had generated so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from llmdoctor.server.api.choice_run import ChoiceRun
from llmdoctor.server.api.protocol_common import SamplingFields
from llmdoctor.server.feedback.completion_log import CompletionLog, CompletionRecord
from llmdoctor.server.feedback.models import utc_now

FINISHED = ("stop", "length")  # a choice that ended by itself; anything else (None, "abort") was cut off


@dataclass(frozen=True)
class ChoiceRecorder:
    log: CompletionLog
    endpoint: str  # "chat" | "completions"
    request_id: str  # the response's id
    prompts: list[Any]  # per prompt index: the messages list (chat) or the prompt (completions)
    n: int  # choices per prompt: choice index // n is its prompt's index
    model: str  # the model the response names
    guidance: dict | None
    sampling: dict
    created_at: datetime = field(default_factory=utc_now)  # built as the request enters: its arrival

    @classmethod
    def of(cls, log: CompletionLog, endpoint: str, request_id: str, body: SamplingFields, prompts: list[Any],
           model: str) -> ChoiceRecorder:
        return cls(log, endpoint, request_id, prompts, body.n, model, body.guidance_record(), body.sampling_record())

    def record(self, run: ChoiceRun) -> None:
        """A ChoiceRun's on_end: queue its record (never blocks, never raises for the database)."""
        spec = run.spec
        assert spec.completion_id is not None, "a logged request plans its choices with completion_ids=True"
        self.log.add(CompletionRecord(
            id=spec.completion_id,
            request_id=self.request_id,
            choice_index=spec.index,
            endpoint=self.endpoint,
            prompt=self.prompts[spec.index // self.n],
            output_text="".join(run.text_pieces),
            output_token_ids=list(run.token_ids),
            model=self.model,
            patient_adapter=spec.request.adapter,
            guidance=self.guidance,
            sampling=self.sampling,
            finish_reason=run.finish_reason,
            status="finished" if run.finish_reason in FINISHED else "aborted",
            created_at=self.created_at,
            finished_at=utc_now(),
        ))
