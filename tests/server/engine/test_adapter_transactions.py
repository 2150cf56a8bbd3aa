"""Adapter loads are transactions (torch engine): any sequence of loads and unloads leaves the engine
serving, a failed load leaves the model exactly as it was, and one name changes one way at a time.

An engine of this module's own (it starts with no adapter and each test leaves it so), the real
embedded model and real trained adapters. Faults that full validation makes impossible for real are
injected with monkeypatch after the checks pass.
"""

import asyncio
import json
import shutil

import peft
import pytest
import pytest_asyncio
from peft.tuners.lora.model import LoraModel

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.server.errors import AdapterError, ConflictError
from tests.server.engine.engine_calls import collect, make_request

PROMPT = "Tell me about the sea."


@pytest_asyncio.fixture(scope="module")
async def bare_engine(embedded_model):
    engine = TorchEngine(embedded_model, max_batch=8, max_queue=16)
    await engine.start()
    yield engine
    await engine.shutdown(grace_seconds=1)


@pytest_asyncio.fixture
async def engine(bare_engine):
    yield bare_engine
    for adapter in bare_engine.adapters():  # leave it as the next test expects: no adapter
        await bare_engine.unload_adapter(adapter.name)


async def greedy(engine, tokenizer, adapter=None, doctor=None):
    guidance = Guidance(doctors=(DoctorWeight(doctor, 1.5),)) if doctor else Guidance()
    tokens, _, last = await collect(engine, make_request(tokenizer, PROMPT, guidance, adapter, max_tokens=12))
    assert last.error is None
    return tokens


async def outputs(engine, tokenizer, adapters=(), doctors=()):
    """Everything observable: the adapter list and the greedy tokens of plain and adapted requests."""
    listed = sorted((a.name, a.kind) for a in engine.adapters())
    return (listed, await greedy(engine, tokenizer), [await greedy(engine, tokenizer, adapter=a) for a in adapters],
            [await greedy(engine, tokenizer, doctor=d) for d in doctors])


@pytest_asyncio.fixture(scope="module")
async def plain(bare_engine, tokenizer):
    return await greedy(bare_engine, tokenizer)


async def test_load_unload_reload_serves_the_adapter_each_time(engine, tokenizer, plain, patient_adapter_dir):
    await engine.load_adapter("pirate", str(patient_adapter_dir), "patient")
    adapted = await greedy(engine, tokenizer, adapter="pirate")
    assert adapted != plain
    await engine.unload_adapter("pirate")
    assert await greedy(engine, tokenizer) == plain and engine.adapters() == []
    await engine.load_adapter("pirate", str(patient_adapter_dir), "patient")
    assert await greedy(engine, tokenizer, adapter="pirate") == adapted
    assert await greedy(engine, tokenizer) == plain


async def test_unload_all_then_load_a_new_name_serves(engine, tokenizer, plain, doctor_adapter_dir,
                                                     patient_adapter_dir):
    await engine.load_adapter("cheerful", str(doctor_adapter_dir), "doctor")
    guided = await greedy(engine, tokenizer, doctor="cheerful")
    await engine.load_adapter("pirate", str(patient_adapter_dir), "patient")
    await engine.unload_adapter("cheerful")
    await engine.unload_adapter("pirate")
    assert engine.patient_rows.host.peft is None  # unwrapped: the bare model again
    assert await greedy(engine, tokenizer) == plain
    await engine.load_adapter("cheerful-2", str(doctor_adapter_dir), "doctor")
    assert await greedy(engine, tokenizer, doctor="cheerful-2") == guided
    assert await greedy(engine, tokenizer) == plain


@pytest.mark.parametrize("name", ["default", "doc.v2", "a.b.c"])
async def test_names_peft_cannot_take_are_served(engine, tokenizer, plain, doctor_adapter_dir, name):
    await engine.load_adapter("reference", str(doctor_adapter_dir), "doctor")
    guided = await greedy(engine, tokenizer, doctor="reference")
    await engine.load_adapter(name, str(doctor_adapter_dir), "doctor")
    assert await greedy(engine, tokenizer, doctor=name) == guided
    await engine.unload_adapter(name)
    assert await greedy(engine, tokenizer, doctor="reference") == guided
    assert await greedy(engine, tokenizer) == plain


async def test_first_load_failing_half_way_through_injection_leaves_the_bare_model(
        engine, tokenizer, plain, patient_adapter_dir, monkeypatch):
    real, calls = LoraModel._create_and_replace, []

    def fail_on_the_third_layer(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected fault")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LoraModel, "_create_and_replace", fail_on_the_third_layer)
    with pytest.raises(AdapterError, match="injected fault"):
        await engine.load_adapter("pirate", str(patient_adapter_dir), "patient")
    monkeypatch.undo()
    assert len(calls) == 3 and engine.adapters() == [] and engine.patient_rows.host.peft is None
    assert not any("lora" in name for name, _ in engine.patient_rows.host.base.named_modules())
    assert await greedy(engine, tokenizer) == plain
    await engine.load_adapter("pirate", str(patient_adapter_dir), "patient")  # and a good load still works
    assert await greedy(engine, tokenizer, adapter="pirate") != plain


async def test_load_failing_after_its_weights_landed_leaves_outputs_and_list_identical(
        engine, tokenizer, doctor_adapter_dir, patient_adapter_dir, second_doctor_adapter_dir, monkeypatch):
    await engine.load_adapter("cheerful", str(doctor_adapter_dir), "doctor")
    await engine.load_adapter("pirate", str(patient_adapter_dir), "patient")
    before = await outputs(engine, tokenizer, ["pirate"], ["cheerful"])
    real = peft.set_peft_model_state_dict

    def fill_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("injected fault after the weights were copied")

    monkeypatch.setattr(peft, "set_peft_model_state_dict", fill_then_fail)
    with pytest.raises(AdapterError, match="injected fault"):
        await engine.load_adapter("terse", str(second_doctor_adapter_dir), "doctor")
    monkeypatch.undo()
    assert await outputs(engine, tokenizer, ["pirate"], ["cheerful"]) == before


async def test_refused_folder_leaves_outputs_and_list_identical(engine, tokenizer, doctor_adapter_dir,
                                                                adapter_root):
    await engine.load_adapter("cheerful", str(doctor_adapter_dir), "doctor")
    before = await outputs(engine, tokenizer, doctors=["cheerful"])
    dora = adapter_root / "transactions-dora"
    shutil.copytree(doctor_adapter_dir, dora, dirs_exist_ok=True)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterError) as err:
        await engine.load_adapter("dora", str(dora), "doctor")
    assert err.value.param == "use_dora"
    assert await outputs(engine, tokenizer, doctors=["cheerful"]) == before


async def test_concurrent_loads_of_one_name_one_wins_the_rest_conflict(engine, tokenizer, plain,
                                                                       doctor_adapter_dir):
    results = await asyncio.gather(*(engine.load_adapter("same", str(doctor_adapter_dir), "doctor")
                                     for _ in range(4)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, Exception))
    assert [a.name for a in engine.adapters()] == ["same"]
    assert await greedy(engine, tokenizer, doctor="same") != plain
    assert await greedy(engine, tokenizer) == plain


async def test_unload_during_a_load_of_the_same_name_conflicts(engine, tokenizer, plain, doctor_adapter_dir):
    load = asyncio.create_task(engine.load_adapter("racing", str(doctor_adapter_dir), "doctor"))
    await asyncio.sleep(0)  # the load holds the name from its first step
    with pytest.raises(ConflictError):
        await engine.unload_adapter("racing")
    await load
    assert [a.name for a in engine.adapters()] == ["racing"]
    assert await greedy(engine, tokenizer) == plain
