import torch

from llmdoctor.server.engine.decode_rule import combine_logprobs


def _lp(*rows):
    return torch.log_softmax(torch.tensor(rows, dtype=torch.float32), -1)


def test_combine_with_zero_betas_is_the_patient():
    patient = _lp([1.0, 2.0, 0.5])[0]
    doctors = _lp([3.0, 0.0, 0.0], [0.0, 0.0, 3.0])
    out = combine_logprobs(patient, doctors, 1.0, torch.zeros(2))
    assert torch.allclose(out, patient, atol=1e-6)


def test_combine_matches_hand_computation():
    patient = _lp([1.0, 2.0, 0.5])[0]
    doctors = _lp([3.0, 0.0, 0.0], [0.0, 0.0, 3.0])
    alpha, betas = 0.7, torch.tensor([0.5, 0.25])
    raw = alpha * patient + 0.5 * doctors[0] + 0.25 * doctors[1]
    expected = raw - torch.logsumexp(raw, -1)
    assert torch.allclose(combine_logprobs(patient, doctors, alpha, betas), expected, atol=1e-6)


def test_combine_is_normalised():
    out = combine_logprobs(_lp([0.1, 5.0, -2.0])[0], _lp([4.0, 1.0, 0.0]), 1.0, torch.tensor([2.0]))
    assert torch.isclose(out.exp().sum(), torch.tensor(1.0))


def test_combine_batched_rows_equal_single_rows():
    patient = _lp([1.0, 2.0, 0.5], [0.0, 0.0, 1.0])
    doctors = torch.stack([_lp([3.0, 0.0, 0.0]), _lp([0.0, 2.0, 0.0])])  # (B, D=1, V)
    betas = torch.tensor([[0.5], [1.5]])
    batched = combine_logprobs(patient, doctors, 1.0, betas)
    for b in range(2):
        assert torch.allclose(batched[b], combine_logprobs(patient[b], doctors[b], 1.0, betas[b]), atol=1e-6)


def test_combine_is_finite_for_extreme_accepted_weights_and_masked_tokens():
    """alpha 0 on a -inf log-prob (0 * inf) and a negative beta on one (inf - inf) must stay finite."""
    patient = torch.tensor([0.0, float("-inf"), float("-inf")])  # a masked vocabulary
    doctors = torch.tensor([[float("-inf"), 0.0, float("-inf")], [-1e30, -0.1, -3.0]])
    for alpha, betas in [(0.0, [1.0, 1.0]), (1.0, [-100.0, 100.0]), (100.0, [-100.0, -100.0])]:
        out = combine_logprobs(patient, doctors, alpha, torch.tensor(betas))
        assert torch.isfinite(out).all() and torch.isclose(out.exp().sum(), torch.tensor(1.0))


def test_combine_keeps_a_nan_row_nan_for_the_caller_to_blame():
    patient = _lp([1.0, 2.0, 0.5], [1.0, 1.0, 1.0])
    patient[1, 0] = float("nan")
    out = combine_logprobs(patient, _lp([[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]), 0.5, torch.tensor([[1.0], [1.0]]))
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def test_ratio_mode_is_the_patient_tilted_by_the_doctors_log_ratio():
    """A ratio doctor adds beta * (log p_doctor - log p_patient): product with alpha lowered by beta."""
    from llmdoctor.server.engine.protocol import DoctorWeight, Guidance

    patient = _lp([1.0, 2.0, 0.5, -1.0])[0]
    doctors = _lp([1.5, 1.0, 0.5, -1.0], [0.0, 2.0, 2.0, 0.0])
    guidance = Guidance(1.0, (DoctorWeight("a", 3.0, "ratio"), DoctorWeight("b", 0.5, "product")))
    assert guidance.rule_alpha == -2.0
    raw = patient + 3.0 * (doctors[0] - patient) + 0.5 * doctors[1]
    expected = raw - torch.logsumexp(raw, -1)
    out = combine_logprobs(patient, doctors, guidance.rule_alpha, torch.tensor([3.0, 0.5]))
    assert torch.allclose(out, expected, atol=1e-5)


def test_ratio_of_a_doctor_equal_to_the_patient_changes_nothing():
    """The point of ratio mode: a doctor that learned nothing does not sharpen the patient."""
    patient = _lp([1.0, 2.0, 0.5, -1.0])[0]
    out = combine_logprobs(patient, patient.unsqueeze(0), 1.0 - 4.0, torch.tensor([4.0]))
    assert torch.allclose(out, patient, atol=1e-5)


def test_a_token_the_patient_rules_out_stays_out_even_with_a_negative_patient_weight():
    """With ratio doctors the patient's weight can go below 0; a masked patient token (-inf, e.g. a
    grammar mask) must not turn into a bonus, whatever the doctors give it."""
    patient = torch.log_softmax(torch.tensor([1.0, float("-inf"), 0.0]), -1)
    doctors = _lp([0.0, 5.0, 0.0])
    for alpha in (-3.0, 0.0, 1.0):
        out = combine_logprobs(patient, doctors, alpha, torch.tensor([4.0]))
        assert torch.isfinite(out).all() and out.exp()[1] == 0.0
        assert torch.isclose(out.exp().sum(), torch.tensor(1.0))
