"""logit_bias, penalties, min_p and min_tokens on the torch engine, against a direct computation on the
embedded model (sampling_reference.py). The vLLM engine's counterparts are in test_vllm_engine.py."""

import asyncio

import pytest

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance, SamplingParams
from llmdoctor.server.errors import InvalidRequestError
from tests.server.engine import sampling_reference as ref
from tests.server.engine.engine_calls import collect, make_request

PROMPT = "Once upon a time, in a small village,"
GUIDED = Guidance(alpha=0.9, doctors=(DoctorWeight("cheerful", 0.8), DoctorWeight("terse", 0.4)))


async def test_logit_bias_minus_100_bans_a_token_the_patient_would_pick(engine, tokenizer):
    plain, _, _ = await collect(engine, make_request(tokenizer, PROMPT, max_tokens=12))
    banned = plain[0]
    biased, _, _ = await collect(engine, make_request(tokenizer, PROMPT, max_tokens=12,
                                                      logit_bias=((banned, -100.0),)))
    assert banned not in biased and biased[0] != banned


async def test_logit_bias_plus_100_forces_a_token(engine, tokenizer):
    forced = tokenizer(" banana")["input_ids"][0]
    tokens, _, _ = await collect(engine, make_request(tokenizer, PROMPT, GUIDED, max_tokens=4,
                                                      logit_bias=((forced, 100.0),)))
    assert tokens == [forced] * 4


@pytest.mark.parametrize("penalties", [
    {"repetition": 1.8}, {"frequency": 1.5}, {"presence": 1.2},
    {"repetition": 1.3, "frequency": 0.5, "presence": 0.5, "bias": {11: 3.0}},
])
async def test_unguided_penalties_equal_the_reference_on_the_patients_logits(engine, tokenizer, hf_model, penalties):
    request = make_request(tokenizer, PROMPT, max_tokens=20, **_params(penalties))
    tokens, _, _ = await collect(engine, request)
    assert tokens == ref.greedy(hf_model, list(request.prompt_token_ids), 20, **penalties)


async def test_guided_penalties_act_on_the_rules_logprobs(engine, tokenizer, hf_model, reference_doctors):
    penalties = {"repetition": 1.5, "frequency": 0.4, "presence": 0.3}
    request = make_request(tokenizer, PROMPT, GUIDED, max_tokens=16, **_params(penalties))
    tokens, _, _ = await collect(engine, request)
    expected = ref.greedy(hf_model, list(request.prompt_token_ids), 16, reference_doctors, 0.9, (0.8, 0.4),
                          **penalties)
    assert tokens == expected


async def test_penalised_and_plain_requests_in_one_batch_keep_their_own_tokens(engine, tokenizer):
    def requests():
        return [make_request(tokenizer, PROMPT, max_tokens=12),
                make_request(tokenizer, PROMPT, max_tokens=12, repetition_penalty=2.0),
                make_request(tokenizer, PROMPT, GUIDED, max_tokens=12, frequency_penalty=1.0)]

    alone = [(await collect(engine, r))[0] for r in requests()]
    together = [tokens for tokens, _, _ in await asyncio.gather(*(collect(engine, r) for r in requests()))]
    assert together == alone and alone[0] != alone[1]


async def test_min_tokens_keeps_stop_tokens_out_until_then(engine, tokenizer):
    plain, _, _ = await collect(engine, make_request(tokenizer, PROMPT, max_tokens=12))
    stop = plain[2]  # would end the request at its third token
    early, _, last = await collect(engine, make_request(tokenizer, PROMPT, max_tokens=12, stop_token_ids=(stop,)))
    assert len(early) == 3 and last.finish_reason == "stop"
    for guidance in (Guidance(), GUIDED):
        later, _, _ = await collect(engine, make_request(tokenizer, PROMPT, guidance, max_tokens=12,
                                                         stop_token_ids=(stop,), min_tokens=8))
        assert len(later) >= 8 and stop not in later[:7]


async def test_min_p_one_keeps_only_the_top_token(engine, tokenizer):
    greedy, _, _ = await collect(engine, make_request(tokenizer, PROMPT, GUIDED, max_tokens=10))
    sampled, _, _ = await collect(engine, make_request(tokenizer, PROMPT, GUIDED, max_tokens=10, temperature=1.5,
                                                       seed=3, min_p=1.0))
    assert sampled == greedy


async def test_logit_bias_outside_the_vocabulary_is_refused(engine, tokenizer):
    with pytest.raises(InvalidRequestError) as caught:
        await collect(engine, make_request(tokenizer, PROMPT, logit_bias=((10**6, 1.0),)))
    assert caught.value.param == "logit_bias"


@pytest.mark.parametrize("bad, param", [
    ({"min_p": 1.5}, "min_p"), ({"min_tokens": 17}, "min_tokens"), ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3.0}, "frequency_penalty"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"logit_bias": ((5, float("nan")),)}, "logit_bias"),
])
def test_out_of_range_sampling_parameters_name_the_field(bad, param):
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams(max_tokens=16, **bad)
    assert caught.value.param == param


def _params(penalties: dict) -> dict:
    return {"repetition_penalty": penalties.get("repetition", 1.0),
            "frequency_penalty": penalties.get("frequency", 0.0),
            "presence_penalty": penalties.get("presence", 0.0),
            "logit_bias": tuple((penalties.get("bias") or {}).items())}
