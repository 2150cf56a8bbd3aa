"""A shared torch engine on the embedded model, with two real doctors and a patient adapter."""

import pytest
import pytest_asyncio
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmdoctor.server.engine.torch_engine import TorchEngine


@pytest.fixture(scope="session")
def tokenizer(embedded_model):
    return AutoTokenizer.from_pretrained(embedded_model.folder)


@pytest.fixture(scope="session")
def hf_model(embedded_model):
    return AutoModelForCausalLM.from_pretrained(embedded_model.folder, dtype=torch.float32).eval()


@pytest_asyncio.fixture(scope="session")
async def engine(embedded_model, doctor_adapter_dir, second_doctor_adapter_dir, patient_adapter_dir):
    engine = TorchEngine(embedded_model, max_batch=16, max_queue=64)
    await engine.start()
    await engine.load_adapter("cheerful", str(doctor_adapter_dir), "doctor")
    await engine.load_adapter("terse", str(second_doctor_adapter_dir), "doctor")
    await engine.load_adapter("pat", str(patient_adapter_dir), "patient")
    yield engine
    await engine.shutdown(grace_seconds=1)


@pytest.fixture(scope="session")
def reference_doctors(embedded_model, doctor_adapter_dir, second_doctor_adapter_dir):
    """The engine fixture's two doctors ("cheerful", "terse") as peft models, for direct computations."""
    from peft import PeftModel

    def load(path):
        base = AutoModelForCausalLM.from_pretrained(embedded_model.folder, dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(path)).eval()

    return load(doctor_adapter_dir), load(second_doctor_adapter_dir)
