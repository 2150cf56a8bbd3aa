"""From a validated request body and its prompt token ids to one engine request per choice.

A call with k prompts and n choices becomes k*n engine requests (the engine has no n); choice
index = prompt_index * n + i, as in OpenAI's API. With a seed, choice 0 uses it as given and every
other choice a seed derived from (seed, index): the same call gives the same outputs, and the
choices of one call still differ from each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from llmdoctor.server.api.choice_run import ChoiceSpec
from llmdoctor.server.api.prompts import PromptTokenizer
from llmdoctor.server.api.serving_models import ModelsService
from llmdoctor.server.engine.protocol import GenerateRequest, Guidance, SamplingParams
from llmdoctor.server.feedback.models import new_completion_id

SEED_SPACE = 2**63


class GenerationBody(Protocol):
    """What the completions and chat request schemas both offer."""

    model: str | None
    n: int
    stop: list[str]
    stop_token_ids: list[int]
    logit_bias_ids: list[int]

    def to_guidance(self) -> Guidance: ...
    def requested_max_tokens(self, prompt_len: int, max_model_len: int) -> int: ...
    def to_sampling_params(self, max_tokens: int) -> SamplingParams: ...


def choice_seed(seed: int | None, index: int) -> int | None:
    if seed is None:
        return None
    if index == 0:
        return seed % SEED_SPACE
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SEED_SPACE


def plan_choices(
    body: GenerationBody,
    prompts: Sequence[list[int]],
    prompt_param: str,
    request_id: str,
    models: ModelsService,
    tokenizer: PromptTokenizer,
    completion_ids: bool = False,
) -> list[ChoiceSpec]:
    """Check names, ids and context sizes (typed 4xx errors), then one ChoiceSpec per choice, each
    with a fresh completion_id when `completion_ids` (the completion log is on)."""
    adapter = models.resolve_adapter(body.model)
    guidance = body.to_guidance()
    models.check_doctors(guidance)
    tokenizer.check_ids(body.stop_token_ids, "stop_token_ids")
    tokenizer.check_ids(body.logit_bias_ids, "logit_bias")
    specs = []
    for p, ids in enumerate(prompts):
        param = prompt_param if len(prompts) == 1 else f"{prompt_param}[{p}]"
        max_tokens = body.requested_max_tokens(len(ids), tokenizer.max_model_len)
        tokenizer.check_context(len(ids), max_tokens, param)
        sampling = body.to_sampling_params(max_tokens)
        for i in range(body.n):
            index = p * body.n + i
            params = replace(sampling, seed=choice_seed(sampling.seed, index))
            request = GenerateRequest(f"{request_id}-{index}", tuple(ids), params, guidance, adapter, body.stream)
            completion_id = new_completion_id() if completion_ids else None
            specs.append(ChoiceSpec(index, request, tuple(body.stop), completion_id))
    return specs


def prompt_tokens_of(specs: Sequence[ChoiceSpec], n: int) -> int:
    """Usage counts each prompt once, however many choices it has (OpenAI's convention)."""
    return sum(len(s.request.prompt_token_ids) for s in specs if s.index % n == 0)
