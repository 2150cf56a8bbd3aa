"""Calling an engine directly in tests: a greedy request from a text prompt, and all its events."""

import itertools

from llmdoctor.server.engine.protocol import GenerateRequest, Guidance, SamplingParams

_ids = itertools.count()


def make_request(tokenizer, prompt, guidance=Guidance(), adapter=None, **sampling):
    sampling = {"max_tokens": 16, "temperature": 0.0, **sampling}
    ids = tuple(tokenizer(prompt)["input_ids"])
    return GenerateRequest(f"t{next(_ids)}", ids, SamplingParams(**sampling), guidance, adapter)


async def collect(engine, request):
    """(tokens, logprobs, last event) of one request."""
    tokens, logprobs, last = [], [], None
    async for event in engine.generate(request):
        tokens += event.token_ids
        logprobs += event.logprobs or ()
        last = event
    return tokens, logprobs, last
