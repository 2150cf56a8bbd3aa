"""`llmdoctor merge` on the pirate patient adapter (tests/conftest.py) and the embedded model, CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmdoctor.server.cli import main
from llmdoctor.server.model_store import resolve_model
from tests.adapters import chat_text, one_torch_thread

PROMPT = "How is the weather?"  # one of the pirate adapter's training questions


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, patient_adapter_dir) -> Path:
    output = tmp_path_factory.mktemp("merge") / "pirate-merged"
    with one_torch_thread():
        assert main(["merge", "--adapter", str(patient_adapter_dir), "--output", str(output)]) == 0
    return output


def _greedy_ids(model, tokenizer, tokens: int = 8) -> list[int]:
    inputs = tokenizer(chat_text(tokenizer, PROMPT), return_tensors="pt")
    with torch.no_grad(), one_torch_thread():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return out[0, inputs.input_ids.shape[1] :].tolist()


def test_merge_greedy_output_equals_the_adapter_on_the_patient(merged_dir, patient_adapter_dir, embedded_model):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    base = AutoModelForCausalLM.from_pretrained(embedded_model.folder, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, patient_adapter_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    expected = _greedy_ids(with_adapter, tokenizer)
    assert _greedy_ids(merged, tokenizer) == expected
    with with_adapter.disable_adapter():
        assert _greedy_ids(with_adapter, tokenizer) != expected  # the adapter, not the base, was merged


def test_merge_writes_a_servable_folder_with_marker(merged_dir, patient_adapter_dir, embedded_model):
    assert list(merged_dir.glob("*.safetensors")) and not list(merged_dir.glob("*.bin"))
    assert (merged_dir / "tokenizer.json").is_file()
    marker = json.loads((merged_dir / "llmdoctor_model.json").read_text())
    assert marker["name"] == "pirate-merged" and marker["merged_from"] == str(patient_adapter_dir.resolve())
    assert resolve_model(str(merged_dir)).name == "pirate-merged"  # what `serve --model` reports


def test_merge_missing_adapter_folder_exits_2(tmp_path, capsys):
    assert main(["merge", "--adapter", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    assert "--adapter" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_merge_folder_without_lora_config_exits_2(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["merge", "--adapter", str(tmp_path / "plain"), "--output", str(tmp_path / "out")]) == 2
    assert "not a LoRA adapter folder" in capsys.readouterr().err


def test_merge_doctor_adapter_exits_2_saying_why(tmp_path, doctor_adapter_dir, capsys):
    assert main(["merge", "--adapter", str(doctor_adapter_dir), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "doctor adapter" in err and "patient" in err
    assert not (tmp_path / "out").exists()


def test_merge_non_empty_output_exits_2_unless_force(tmp_path, patient_adapter_dir, capsys):
    adapter = shutil.copytree(patient_adapter_dir, tmp_path / "adapter")
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert main(["merge", "--adapter", str(adapter), "--output", str(output)]) == 2
    assert "--force" in capsys.readouterr().err and (output / "keep.txt").is_file()
    with one_torch_thread():
        assert main(["merge", "--adapter", str(adapter), "--output", str(output), "--force"]) == 0
    assert not (output / "keep.txt").exists() and (output / "llmdoctor_model.json").is_file()
