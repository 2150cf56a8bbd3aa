"""Rows for the feedback tests (also imported by the writer subprocess of test_database.py)."""

from __future__ import annotations

from llmdoctor.server.feedback.models import Completion, Vote, VoteItem, guidance_key, new_completion_id, prompt_key

MESSAGES = [{"role": "user", "content": "Say something nice ☀"}]


def completion(request_id: str = "chatcmpl-1", choice_index: int = 0, **fields) -> Completion:
    guidance = {"alpha": 1.0, "doctors": [{"name": "positivity", "beta": 2.0}]}
    row = dict(
        id=new_completion_id(), request_id=request_id, choice_index=choice_index, endpoint="chat",
        prompt_key=prompt_key(MESSAGES), prompt=MESSAGES, output_text="What a lovely day!",
        output_token_ids=[1, 22, 333], model="smollm2", patient_adapter=None, guidance=guidance,
        guidance_key=guidance_key(guidance, None), sampling={"temperature": 0.7, "seed": 3},
        finish_reason="stop", status="finished",
    )
    return Completion(**{**row, **fields})


def vote(kind: str, completion_ids: list[str], **fields) -> Vote:
    """Items in the order given (pairwise: chosen, rejected)."""
    items = [VoteItem(position=i, completion_id=cid) for i, cid in enumerate(completion_ids)]
    return Vote(**{"kind": kind, "prompt_key": prompt_key(MESSAGES), "source": "log", "items": items, **fields})
