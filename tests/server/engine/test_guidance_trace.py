"""guidance.explain, guidance.max_kl and the KL tally on the torch engine, against direct computations on the
embedded model and its doctors (the vLLM engine's counterparts are in test_vllm_engine.py)."""

import math

import pytest
import torch

from llmdoctor.server.engine.decode_rule import BISECTION_STEPS, combine_logprobs, guided_rule, kl_from_patient
from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from llmdoctor.server.errors import InvalidRequestError
from tests.server.engine.engine_calls import collect, make_request

PROMPT = "Once upon a time, in a small village,"
DOCTORS = (DoctorWeight("cheerful", 2.0), DoctorWeight("terse", -0.5, "ratio"))


async def _explained(engine, tokenizer, guidance, **sampling):
    request = make_request(tokenizer, PROMPT, guidance, logprobs=0, **sampling)
    explanation, last = [], None
    tokens, logprobs, _ = [], [], None
    async for event in engine.generate(request):
        tokens += event.token_ids
        logprobs += event.logprobs or ()
        explanation += event.explanation or ()
        last = event
    return request, tokens, logprobs, explanation, last


def _direct(hf_model, doctors, prompt_ids, tokens):
    """Per generated position: the patient's and each doctor's full log-softmax, from full-sequence forwards."""
    ids = torch.tensor([list(prompt_ids) + tokens[:-1]])
    positions = torch.arange(len(prompt_ids) - 1, ids.shape[1])
    with torch.no_grad():
        patient = torch.log_softmax(hf_model(ids).logits[0].float(), -1)[positions]
        docs = torch.stack([torch.log_softmax(d(ids).logits[0].float(), -1)[positions] for d in doctors], 1)
    return patient, docs  # (T, V), (T, D, V)


async def test_explanation_equals_a_direct_computation_and_recombines_into_the_rule(
        engine, tokenizer, hf_model, reference_doctors):
    guidance = Guidance(alpha=0.9, doctors=DOCTORS, explain=True)
    request, tokens, logprobs, explanation, last = await _explained(engine, tokenizer, guidance, max_tokens=10)
    assert [e.token_id for e in explanation] == tokens
    patient, docs = _direct(hf_model, reference_doctors, request.prompt_token_ids, tokens)
    at = torch.tensor(tokens)
    steps = torch.arange(len(tokens))
    rule_alpha = 0.9 + 0.5  # alpha less the ratio doctor's beta (-0.5)
    betas = torch.tensor([2.0, -0.5])
    rule = combine_logprobs(patient, docs, rule_alpha, betas)
    for i, entry in enumerate(explanation):
        # the rule's log-prob is exactly what logprobs reports
        assert entry.rule_logprob == logprobs[i].logprob
        assert entry.patient_logprob == pytest.approx(patient[i, tokens[i]].item(), abs=1e-3)
        assert dict(entry.doctor_logprobs) == pytest.approx(
            {"cheerful": docs[i, 0, tokens[i]].item(), "terse": docs[i, 1, tokens[i]].item()}, abs=1e-3)
        assert entry.beta_scale == 1.0
    # recombination: rule_alpha * patient + sum_i beta_i * doctor_i, less the step's log-normaliser, is the rule
    log_z = torch.logsumexp(rule_alpha * patient + (betas.view(1, 2, 1) * docs).sum(1), -1)
    recombined = torch.tensor([rule_alpha * e.patient_logprob + 2.0 * dict(e.doctor_logprobs)["cheerful"]
                               - 0.5 * dict(e.doctor_logprobs)["terse"] for e in explanation]) - log_z
    assert torch.allclose(recombined, torch.tensor([e.rule_logprob for e in explanation]), atol=2e-3)
    assert torch.allclose(torch.tensor([e.rule_logprob for e in explanation]), rule[steps, at], atol=1e-3)
    kl = kl_from_patient(rule, patient)
    assert torch.allclose(torch.tensor([e.kl for e in explanation]), kl, atol=1e-3)
    # the tally the usage reports: the same KLs summed over every token
    assert last.kl_tokens == len(tokens)
    assert last.kl_sum == pytest.approx(sum(e.kl for e in explanation), rel=1e-5)


async def test_explain_on_a_plain_request_shows_the_patient_alone(engine, tokenizer, hf_model):
    request, tokens, logprobs, explanation, last = await _explained(
        engine, tokenizer, Guidance(explain=True), max_tokens=6)
    plain, _, _ = await collect(engine, make_request(tokenizer, PROMPT, max_tokens=6))
    assert tokens == plain
    for entry, lp in zip(explanation, logprobs, strict=True):
        assert entry.doctor_logprobs == () and entry.kl == pytest.approx(0.0, abs=1e-5)
        assert entry.rule_logprob == lp.logprob and entry.patient_logprob == pytest.approx(lp.logprob, abs=1e-5)


async def test_guided_requests_tally_kl_without_explain(engine, tokenizer):
    _, tokens, _, explanation, last = await _explained(
        engine, tokenizer, Guidance(doctors=DOCTORS[:1]), max_tokens=8)
    assert explanation == [] and last.kl_tokens == len(tokens) and last.kl_sum > 0
    _, _, _, _, plain = await _explained(engine, tokenizer, Guidance(), max_tokens=4)
    assert plain.kl_sum is None and plain.kl_tokens == 0


@pytest.mark.parametrize("budget", [0.0, 0.05, 0.3])
async def test_max_kl_keeps_every_step_within_budget(engine, tokenizer, budget):
    free = Guidance(doctors=DOCTORS[:1], explain=True)
    _, free_tokens, _, unbudgeted, _ = await _explained(engine, tokenizer, free, max_tokens=16)
    assert max(e.kl for e in unbudgeted) > 0.3  # beta 2 moves the rule well past every budget tried here
    bounded = Guidance(doctors=DOCTORS[:1], explain=True, max_kl=budget)
    _, tokens, _, explanation, last = await _explained(engine, tokenizer, bounded, max_tokens=16)
    assert all(e.kl <= budget + 1e-6 for e in explanation), [e.kl for e in explanation]
    assert any(e.beta_scale < 1.0 for e in explanation)
    assert last.kl_sum / last.kl_tokens <= budget + 1e-6
    if budget == 0.0:  # nothing may move: the patient's own greedy tokens
        plain, _, _ = await collect(engine, make_request(tokenizer, PROMPT, max_tokens=16))
        assert tokens == plain


async def test_max_kl_leaves_steps_within_budget_alone(engine, tokenizer):
    """A budget above every step's KL changes nothing: same tokens, same log-probs, scale 1 throughout."""
    free = Guidance(doctors=DOCTORS, explain=True)
    _, tokens, logprobs, explanation, _ = await _explained(engine, tokenizer, free, max_tokens=10)
    loose = Guidance(doctors=DOCTORS, explain=True, max_kl=max(e.kl for e in explanation) + 1.0)
    _, tokens2, logprobs2, explanation2, _ = await _explained(engine, tokenizer, loose, max_tokens=10)
    assert tokens2 == tokens and [lp.logprob for lp in logprobs2] == [lp.logprob for lp in logprobs]
    assert all(e.beta_scale == 1.0 for e in explanation2)


def test_bisection_finds_the_largest_scale_that_fits():
    torch.manual_seed(0)
    patient = torch.log_softmax(torch.randn(5, 300) * 3, -1)
    doctors = torch.log_softmax(torch.randn(5, 2, 300) * 3, -1)
    alpha, betas = torch.tensor([1.0, 0.5, 1.0, 2.0, 1.0]), torch.tensor([[1.5, 0.0], [0.3, 0.3], [2, -1.0],
                                                                             [0.0, 0.0], [0.01, 0.0]])
    budgets = [0.2, 0.1, None, 0.05, 10.0]
    step = guided_rule(patient, doctors, alpha, betas, budgets)
    free = guided_rule(patient, doctors, alpha, betas)
    for row, budget in enumerate(budgets):
        if budget is None or free.kl[row] <= budget:  # untouched
            assert step.scale[row] == 1.0 and torch.equal(step.logprobs[row], free.logprobs[row])
            continue
        assert step.kl[row] <= budget and 0 <= step.scale[row] < 1
        # one bisection step more would not fit: the scale is the largest within 2**-BISECTION_STEPS
        s = step.scale[row] + 2.0 ** -BISECTION_STEPS
        departure = (alpha[row] - 1) * patient[row] + (betas[row].unsqueeze(-1) * doctors[row]).sum(0)
        assert kl_from_patient(torch.log_softmax(patient[row] + s * departure, -1), patient[row]) > budget
        assert math.isclose(step.logprobs[row].exp().sum().item(), 1.0, abs_tol=1e-5)


def test_max_kl_out_of_range_is_refused_naming_the_field():
    for bad in (-0.1, float("nan"), 1e9):
        with pytest.raises(InvalidRequestError) as caught:
            Guidance(doctors=DOCTORS, max_kl=bad)
        assert caught.value.param == "guidance.max_kl"
