"""Requests are isolated (issue 15.1): nothing one request sends, and no fault in its rows, can fail
or change another request's output in the torch engine.

Each test runs a plain greedy request alongside the odd one (submitted together, so they share
decode steps) and once more after it, and compares both with the plain request's solo tokens.
Faults that cannot be caused for real (a forward pass that raises or returns NaN) are injected into
the rows of one doctor adapter only, so the engine can blame them on the request that uses it.
"""

import asyncio

import pytest

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from tests.server.engine.engine_calls import collect, make_request

GOOD_PROMPT = "The capital of France is"
ODD_PROMPT = "Once upon a time, in a small village,"
FAULTY_DOCTOR = "terse"  # the injected faults hit the rows of this doctor adapter only


async def _good(engine, tokenizer):
    return await collect(engine, make_request(tokenizer, GOOD_PROMPT, max_tokens=12))


async def check_isolated(engine, tokenizer, odd_request):
    """Run `odd_request` beside a plain greedy one and return the odd one's last event."""
    alone, _, _ = await _good(engine, tokenizer)
    (good, _, good_last), (_, _, odd_last) = await asyncio.gather(
        _good(engine, tokenizer), collect(engine, odd_request)
    )
    after, _, after_last = await _good(engine, tokenizer)
    assert good_last.error is None and after_last.error is None
    assert good == alone and after == alone
    return odd_last


GUIDED = dict(max_tokens=12, temperature=1.0, seed=7)
ACCEPTED_EXTREMES = {
    "tiny_temperature": (Guidance(), dict(max_tokens=12, temperature=1e-300)),
    "largest_temperature": (Guidance(), dict(max_tokens=12, temperature=2.0, seed=3)),
    "tiny_top_p": (Guidance(), dict(max_tokens=12, temperature=1.0, top_p=1e-300)),
    "huge_top_k": (Guidance(), dict(max_tokens=12, temperature=1.0, top_k=2**31 - 1)),
    "lowest_seed": (Guidance(), dict(max_tokens=12, temperature=1.0, seed=-(2**63))),
    "highest_seed": (Guidance(), dict(max_tokens=12, temperature=1.0, seed=2**64 - 1)),
    "largest_weights": (Guidance(alpha=100.0, doctors=(DoctorWeight("cheerful", 100.0), DoctorWeight("terse", -100.0))),
                        dict(GUIDED, logprobs=20)),
    "zero_alpha_negative_beta": (Guidance(alpha=0.0, doctors=(DoctorWeight("cheerful", -100.0),)), GUIDED),
    "tiny_weights": (Guidance(alpha=1e-6, doctors=(DoctorWeight("cheerful", -1e-6), DoctorWeight("terse", 1e-6))),
                     GUIDED),
    "negative_betas_tiny_temperature": (
        Guidance(alpha=0.5, doctors=(DoctorWeight("cheerful", -100.0), DoctorWeight("terse", -50.0))),
        dict(max_tokens=12, temperature=1e-300, top_p=1e-300, logprobs=5)),
}


@pytest.mark.parametrize("name", list(ACCEPTED_EXTREMES))
async def test_accepted_extreme_request_completes_and_leaves_others_unchanged(engine, tokenizer, name):
    guidance, sampling = ACCEPTED_EXTREMES[name]
    odd_last = await check_isolated(engine, tokenizer, make_request(tokenizer, ODD_PROMPT, guidance, **sampling))
    assert odd_last.error is None and odd_last.finish_reason in ("stop", "length")


def _fault_in_doctor_rows(monkeypatch, engine, fault):
    """Wrap the shared forward so `fault(logits, rows)` hits the rows running FAULTY_DOCTOR."""
    host = engine.patient_rows.host
    forward = host.forward

    def faulty(input_ids, attention_mask, position_ids, cache, adapters):
        logits = forward(input_ids, attention_mask, position_ids, cache, adapters)
        rows = [i for i, name in enumerate(adapters) if name == FAULTY_DOCTOR]
        return fault(logits, rows) if rows else logits

    monkeypatch.setattr(host, "forward", faulty)


def _raise(logits, rows):
    raise RuntimeError("injected forward fault")


def _nan(logits, rows):
    logits = logits.clone()  # the forward's output is an inference tensor
    logits[rows] = float("nan")
    return logits


def _faulty_request(tokenizer, **sampling):
    guidance = Guidance(doctors=(DoctorWeight(FAULTY_DOCTOR, 0.5),))
    return make_request(tokenizer, ODD_PROMPT, guidance, max_tokens=12, **sampling)


async def test_forward_that_raises_for_one_requests_rows_fails_only_that_request(engine, tokenizer, monkeypatch):
    alone, _, _ = await _good(engine, tokenizer)
    _fault_in_doctor_rows(monkeypatch, engine, _raise)
    (good, _, good_last), (_, _, odd_last) = await asyncio.gather(
        _good(engine, tokenizer), collect(engine, _faulty_request(tokenizer))
    )
    assert good == alone and good_last.error is None
    assert odd_last.finish_reason == "abort" and "injected forward fault" in odd_last.error
    assert (await _good(engine, tokenizer))[0] == alone


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_non_finite_logits_in_one_requests_rows_fail_only_that_request(engine, tokenizer, monkeypatch,
                                                                             temperature):
    alone, _, _ = await _good(engine, tokenizer)
    _fault_in_doctor_rows(monkeypatch, engine, _nan)
    (good, _, good_last), (odd, _, odd_last) = await asyncio.gather(
        _good(engine, tokenizer), collect(engine, _faulty_request(tokenizer, temperature=temperature))
    )
    assert good == alone and good_last.error is None
    assert odd == [] and odd_last.finish_reason == "abort" and "non-finite" in odd_last.error


async def test_transient_forward_fault_is_retried_without_failing_anyone(engine, tokenizer, monkeypatch):
    """A fault nobody can be blamed for (it does not come back in isolation) fails no request."""
    alone, _, _ = await _good(engine, tokenizer)
    odd_alone, _, _ = await collect(engine, make_request(tokenizer, ODD_PROMPT, max_tokens=12))
    host = engine.patient_rows.host
    forward, injected = host.forward, []

    def once(input_ids, *rest):
        if not injected and input_ids.shape == (2, 1):  # the first decode step both requests share
            injected.append(True)
            raise RuntimeError("injected transient fault")
        return forward(input_ids, *rest)

    monkeypatch.setattr(host, "forward", once)
    (good, _, good_last), (odd, _, odd_last) = await asyncio.gather(
        _good(engine, tokenizer), collect(engine, make_request(tokenizer, ODD_PROMPT, max_tokens=12))
    )
    assert injected and good_last.error is None and odd_last.error is None
    assert good == alone and odd == odd_alone
