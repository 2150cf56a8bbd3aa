import pytest
import torch

from llmdoctor.server.api.engine_factory import build_engine, torch_placement
from llmdoctor.server.config import ConfigError, ServerSettings


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks cuda where a GPU is visible")
def test_placement_auto_on_a_cpu_machine_is_cpu_float32():
    assert torch_placement(ServerSettings()) == {"device": "cpu", "dtype": torch.float32}


def test_placement_explicit_dtype_is_kept():
    assert torch_placement(ServerSettings(device="cpu", dtype="bfloat16"))["dtype"] is torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal when CUDA is missing")
def test_placement_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="--device cuda"):
        torch_placement(ServerSettings(device="cuda"))


def test_engine_vllm_is_refused_until_it_exists():
    with pytest.raises(ConfigError, match="vllm"):
        build_engine(ServerSettings(engine="vllm"))


def test_doctor_base_is_resolved_and_passed_to_the_engine(embedded_model):
    engine = build_engine(ServerSettings(doctor_base=str(embedded_model.folder)))
    assert engine.doctor_base_name == embedded_model.name
