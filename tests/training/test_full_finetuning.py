"""`alignment.use_lora: false`: full fine-tuning with DPO and GDPO on the embedded model, CPU.

Two real steps each. The reference is the untouched model, precomputed before step 1 (no second
copy in memory), so step 1 must give the untrained loss exactly; the output is a full model folder
that `llmdoctor serve --model` serves and that the adapter loader and `merge` refuse by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from llmdoctor.server.adapter_folders import inspect_adapter
from llmdoctor.server.cli import main
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.server.errors import AdapterError
from llmdoctor.server.model_store import resolve_model
from tests.adapters import one_torch_thread
from tests.training import test_dpo_training as dpo_tests
from tests.training import test_gdpo_training as gdpo_tests

FULL = {"use_lora": False, "learning_rate": 1e-5, "batch_size": 2, "max_steps": 2, "save_steps": 1,
        "save_total_limit": 1}


def _train(config: Path, method: str) -> Path:
    with one_torch_thread():
        assert main(["train", method, "--config", str(config)]) == 0
    return config.parent / "out"


@pytest.fixture(scope="module")
def full_dpo(tmp_path_factory, embedded_model) -> Path:
    return _train(dpo_tests._write_config(tmp_path_factory.mktemp("full-dpo"), **FULL), "dpo")


@pytest.fixture(scope="module")
def full_gdpo(tmp_path_factory, embedded_model) -> Path:
    return _train(gdpo_tests._write_config(tmp_path_factory.mktemp("full-gdpo"), **FULL), "gdpo")


def _steps(out: Path) -> list[dict]:
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [log for log in logs if "rewards/accuracies" in log]


def test_full_dpo_first_step_uses_the_untouched_model_as_reference(full_dpo):
    first, second = _steps(full_dpo)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert second["rewards/margins"] > 0  # and the reference stays fixed while the policy moves


def test_full_gdpo_first_step_uses_the_untouched_model_as_reference(full_gdpo):
    first, second = _steps(full_gdpo)
    # K = 3, every reward 0: pairwise ln 2 and Plackett-Luce ln 3 + ln 2, weighted 0.5 each
    assert first["loss"] == pytest.approx(0.5 * math.log(2) + 0.5 * (math.log(3) + math.log(2)), abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert second["rewards/margins"] > 0


@pytest.mark.parametrize("run", ["full_dpo", "full_gdpo"])
def test_full_finetuning_writes_a_full_model_folder_without_pickles(run, request, embedded_model):
    out: Path = request.getfixturevalue(run)
    meta = json.loads((out / "llmdoctor.json").read_text())
    assert (meta["kind"], meta["weights"], meta["base_model"]) == ("patient", "full", embedded_model.name)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    trained, base = load_file(str(out / "model.safetensors")), load_file(str(embedded_model.folder / "model.safetensors"))
    assert any(not torch.equal(trained[key], base[key]) for key in base)  # every weight may move, some did


def test_full_finetuning_keeps_save_total_limit_checkpoints(full_dpo):
    checkpoints = [p.name for p in (full_dpo / "checkpoints").iterdir() if p.name.startswith("checkpoint-")]
    assert checkpoints == ["checkpoint-2"]  # save_steps 1, save_total_limit 1: only the newest is kept


async def test_full_finetuned_model_serves_with_the_torch_engine(full_dpo):
    from llmdoctor.server.engine.protocol import GenerateRequest, Guidance, SamplingParams

    model = resolve_model(str(full_dpo))
    tokenizer = AutoTokenizer.from_pretrained(model.folder)
    engine = TorchEngine(model, max_batch=2, max_queue=4)
    ids = tuple(tokenizer("The weather today is", add_special_tokens=False)["input_ids"])
    with one_torch_thread():
        await engine.start()
        try:
            request = GenerateRequest("full", ids, SamplingParams(max_tokens=6, temperature=0.0), Guidance(), None)
            tokens = [token async for event in engine.generate(request) for token in event.token_ids]
        finally:
            await engine.shutdown(grace_seconds=1)
    assert len(tokens) == 6


def test_full_model_folder_is_refused_as_an_adapter_with_the_serve_command(full_dpo, embedded_model):
    with pytest.raises(AdapterError, match="full model folder.*llmdoctor serve --model"):
        inspect_adapter(str(full_dpo), [full_dpo.parent], "patient", embedded_model.name)


def test_merge_refuses_a_full_model_folder(full_dpo, tmp_path, capsys):
    assert main(["merge", "--adapter", str(full_dpo), "--output", str(tmp_path / "merged")]) == 2
    assert "already a full model" in capsys.readouterr().err
