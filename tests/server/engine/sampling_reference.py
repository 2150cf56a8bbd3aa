"""Greedy decoding with OpenAI's / vLLM's sampling parameters, computed directly from full-sequence
forwards of the models: the reference both engines' tests compare with.

Written out here from the published formulas (vLLM's sampler, OpenAI's parameter docs), not
from the server's code, so a mistake there shows up as a mismatch.
"""

from __future__ import annotations

import torch

from llmdoctor.server.engine.decode_rule import combine_logprobs


def penalised(scores: torch.Tensor, prompt: list[int], output: list[int], repetition: float = 1.0,
              frequency: float = 0.0, presence: float = 0.0, bias: dict[int, float] | None = None) -> torch.Tensor:
    scores = scores.clone()
    for token, value in (bias or {}).items():
        scores[token] += value
    for token in set(prompt) | set(output):
        scores[token] = scores[token] / repetition if scores[token] > 0 else scores[token] * repetition
    for token in set(output):
        scores[token] -= frequency * output.count(token) + presence
    return scores


def greedy(base, prompt: list[int], n: int, doctors=(), alpha: float = 1.0, betas=(), **penalties) -> list[int]:
    """n greedy tokens; with doctors, the rule's log-probs are the scores, else the patient's logits."""
    output: list[int] = []
    for _ in range(n):
        ids = torch.tensor([prompt + output])
        with torch.no_grad():
            logits = base(ids).logits[0, -1].float()
            if doctors:
                patient = torch.log_softmax(logits, -1)
                docs = torch.stack([torch.log_softmax(d(ids).logits[0, -1].float(), -1) for d in doctors])
                logits = combine_logprobs(patient[None], docs[None], torch.tensor([alpha]), torch.tensor([betas]))[0]
        output.append(int(penalised(logits, prompt, output, **penalties).argmax()))
    return output
