import asyncio

import pytest
import torch

from llmdoctor.server.engine.decode_rule import combine_logprobs
from llmdoctor.server.engine.sampling import SamplingBatch, sample_rows
from llmdoctor.server.engine.protocol import DoctorWeight, GenerateRequest, Guidance, SamplingParams
from llmdoctor.server.errors import ContextOverflowError, InvalidRequestError, NotFoundError
from tests.server.engine.engine_calls import collect as _collect
from tests.server.engine.engine_calls import make_request as _request

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):"]


def _hf_greedy(model, tokenizer, prompt, n):
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


async def test_greedy_unguided_equals_transformers_generate(engine, hf_model, tokenizer):
    results = await asyncio.gather(*(_collect(engine, _request(tokenizer, p)) for p in PROMPTS))
    for prompt, (tokens, _, _) in zip(PROMPTS, results):
        assert tokens == _hf_greedy(hf_model, tokenizer, prompt, len(tokens))


async def test_greedy_all_betas_zero_equals_patient(engine, hf_model, tokenizer):
    zero = Guidance(doctors=(DoctorWeight("cheerful", 0.0), DoctorWeight("terse", 0.0)))
    results = await asyncio.gather(*(_collect(engine, _request(tokenizer, p, zero)) for p in PROMPTS))
    for prompt, (tokens, _, _) in zip(PROMPTS, results):
        assert tokens == _hf_greedy(hf_model, tokenizer, prompt, len(tokens))


def _reference_rule_logprobs(base, doctors, prompt_ids, tokens, alpha, betas):
    """Per generated position, the rule's log-prob of the token, from full-sequence forwards."""
    ids = torch.tensor([list(prompt_ids) + tokens[:-1]])
    with torch.no_grad():
        patient = torch.log_softmax(base(ids).logits[0].float(), -1)
        docs = torch.stack([torch.log_softmax(d(ids).logits[0].float(), -1) for d in doctors], 1)  # (T, D, V)
    rule = combine_logprobs(patient, docs, alpha, torch.tensor(betas))  # (T, V)
    positions = torch.arange(len(prompt_ids) - 1, ids.shape[1])
    return rule[positions], rule[positions, torch.tensor(tokens)]


async def test_guided_logprobs_equal_reference_from_the_models(engine, hf_model, tokenizer, reference_doctors):
    guidance = Guidance(alpha=0.9, doctors=(DoctorWeight("cheerful", 0.8), DoctorWeight("terse", 0.4)))
    request = _request(tokenizer, PROMPTS[1], guidance, logprobs=0, max_tokens=12)
    tokens, logprobs, _ = await _collect(engine, request)
    rule, expected = _reference_rule_logprobs(
        hf_model, reference_doctors, request.prompt_token_ids, tokens, 0.9, [0.8, 0.4]
    )
    got = torch.tensor([lp.logprob for lp in logprobs])
    assert torch.allclose(got, expected, atol=1e-3)
    assert tokens == rule.argmax(-1).tolist()  # greedy follows the rule, not the patient


async def test_guided_output_differs_from_patient(engine, tokenizer):
    plain, _, _ = await _collect(engine, _request(tokenizer, PROMPTS[1], max_tokens=24))
    guided, _, _ = await _collect(
        engine, _request(tokenizer, PROMPTS[1], Guidance(doctors=(DoctorWeight("cheerful", 2.0),)), max_tokens=24)
    )
    assert plain != guided


async def test_unguided_logprobs_are_the_patients_own(engine, hf_model, tokenizer):
    request = _request(tokenizer, PROMPTS[0], logprobs=3, max_tokens=6)
    tokens, logprobs, _ = await _collect(engine, request)
    ids = torch.tensor([list(request.prompt_token_ids) + tokens[:-1]])
    with torch.no_grad():
        lp = torch.log_softmax(hf_model(ids).logits[0], -1)[len(request.prompt_token_ids) - 1 :]
    assert torch.allclose(torch.tensor([x.logprob for x in logprobs]), lp[torch.arange(len(tokens)), tokens], atol=1e-3)
    assert all(len(x.top) == 3 and x.top[0][1] >= x.top[-1][1] for x in logprobs)


async def test_seeded_sampling_is_reproducible(engine, tokenizer):
    params = dict(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=20)
    a, b = await asyncio.gather(*(_collect(engine, _request(tokenizer, PROMPTS[1], **params)) for _ in range(2)))
    assert a[0] == b[0]


async def test_different_seeds_differ(engine, tokenizer):
    outs = await asyncio.gather(
        *(_collect(engine, _request(tokenizer, PROMPTS[1], temperature=1.0, seed=s, max_tokens=20)) for s in range(3))
    )
    assert len({tuple(o[0]) for o in outs}) > 1


async def test_max_tokens_ends_with_length(engine, tokenizer):
    tokens, _, last = await _collect(engine, _request(tokenizer, PROMPTS[1], max_tokens=5, ignore_eos=True))
    assert len(tokens) == 5 and last.finish_reason == "length" and last.completion_tokens == 5


async def test_stop_token_id_ends_with_stop(engine, hf_model, tokenizer):
    expected = _hf_greedy(hf_model, tokenizer, PROMPTS[1], 8)
    tokens, _, last = await _collect(engine, _request(tokenizer, PROMPTS[1], stop_token_ids=(expected[3],)))
    assert tokens == expected[: expected.index(expected[3]) + 1] and last.finish_reason == "stop"


async def test_usage_counts_prompt_and_completion(engine, tokenizer):
    request = _request(tokenizer, PROMPTS[0], max_tokens=4, ignore_eos=True)
    _, _, last = await _collect(engine, request)
    assert (last.prompt_tokens, last.completion_tokens) == (len(request.prompt_token_ids), 4)


async def test_context_overflow_is_refused(engine, tokenizer):
    with pytest.raises(ContextOverflowError):
        await _collect(engine, _request(tokenizer, PROMPTS[0], max_tokens=engine.max_model_len))


async def test_unknown_doctor_is_not_found(engine, tokenizer):
    with pytest.raises(NotFoundError) as err:
        await _collect(engine, _request(tokenizer, PROMPTS[0], Guidance(doctors=(DoctorWeight("nope", 1.0),))))
    assert "cheerful" in err.value.message and err.value.param == "guidance.doctors[0].name"


async def test_out_of_vocabulary_prompt_is_refused(engine):
    request = GenerateRequest("oov", (engine.vocab_size + 5,), SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError):
        await _collect(engine, request)


async def test_seeded_guided_draws_equal_a_direct_computation_alone_and_in_company(
        engine, hf_model, tokenizer, reference_doctors):
    """Each token is sample_rows over the rule from full-sequence forwards, at the request's seed and
    position; a batch of other requests (other seeds, guidance, top-k / top-p) changes nothing."""
    guidance = Guidance(alpha=0.9, doctors=(DoctorWeight("cheerful", 0.8), DoctorWeight("terse", 0.4)))
    params = dict(temperature=0.8, top_k=40, top_p=0.9, seed=2**64 - 5, max_tokens=10)
    request = _request(tokenizer, PROMPTS[1], guidance, **params)
    tokens, _, _ = await _collect(engine, request)
    rule, _ = _reference_rule_logprobs(hf_model, reference_doctors, request.prompt_token_ids, tokens, 0.9, [0.8, 0.4])
    n = len(tokens)
    batch = SamplingBatch.build([0.8] * n, [40] * n, [0.9] * n, [2**64 - 5] * n, list(range(n)))
    assert sample_rows(rule, batch).tolist() == tokens

    company = [_request(tokenizer, PROMPTS[0], temperature=1.0, seed=s, max_tokens=10) for s in range(3)]
    company.append(_request(tokenizer, PROMPTS[2], Guidance(doctors=(DoctorWeight("terse", 1.5),)), max_tokens=4))
    together = await asyncio.gather(_collect(engine, _request(tokenizer, PROMPTS[1], guidance, **params)),
                                    *(_collect(engine, r) for r in company))
    assert together[0][0] == tokens


async def test_staggered_joins_get_the_same_tokens_as_alone(engine, tokenizer):
    alone = [(await _collect(engine, _request(tokenizer, p, max_tokens=12)))[0] for p in PROMPTS]

    async def delayed(i, prompt):
        await asyncio.sleep(0.3 * i)
        return (await _collect(engine, _request(tokenizer, prompt, max_tokens=12 - 3 * i)))[0]

    together = await asyncio.gather(*(delayed(i, p) for i, p in enumerate(PROMPTS)))
    assert [alone[i][: len(t)] for i, t in enumerate(together)] == together


async def test_batch_mixes_adapters_and_bare_patient(engine, tokenizer):
    alone_bare = (await _collect(engine, _request(tokenizer, PROMPTS[1])))[0]
    alone_pat = (await _collect(engine, _request(tokenizer, PROMPTS[1], adapter="pat")))[0]
    bare, pat = await asyncio.gather(
        _collect(engine, _request(tokenizer, PROMPTS[1])), _collect(engine, _request(tokenizer, PROMPTS[1], adapter="pat"))
    )
    assert bare[0] == alone_bare and pat[0] == alone_pat and alone_bare != alone_pat


async def test_abort_frees_the_slot(engine, tokenizer):
    request = _request(tokenizer, PROMPTS[1], max_tokens=200, ignore_eos=True)
    stream = engine.generate(request)
    await stream.__anext__()
    await stream.aclose()  # the consumer walks away
    for _ in range(100):
        if request.request_id not in engine._all:
            break
        await asyncio.sleep(0.05)
    assert request.request_id not in engine._all


async def test_unload_waits_for_in_flight_users(engine, tokenizer, doctor_adapter_dir):
    await engine.load_adapter("temp", str(doctor_adapter_dir), "doctor")
    guidance = Guidance(doctors=(DoctorWeight("temp", 1.0),))
    reference = (await _collect(engine, _request(tokenizer, PROMPTS[2], guidance, max_tokens=24)))[0]
    task = asyncio.create_task(_collect(engine, _request(tokenizer, PROMPTS[2], guidance, max_tokens=24)))
    await asyncio.sleep(0.5)
    await engine.unload_adapter("temp")
    assert "temp" not in [a.name for a in engine.adapters()]
    tokens, _, last = await task
    assert tokens == reference and last.error is None
    with pytest.raises(NotFoundError):
        await _collect(engine, _request(tokenizer, PROMPTS[2], guidance))
