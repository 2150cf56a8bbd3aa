"""server/adapter_folders.py: which adapter folders the server agrees to load, and why not.

Bad folders are real adapters (the session fixtures) copied and then broken one way each.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmdoctor.server.adapter_folders import (
    CONFIG_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    base_model_matches,
    inspect_adapter,
    validate_adapter_name,
    write_adapter_metadata,
)
from llmdoctor.server.errors import AdapterError, ForbiddenError, NotFoundError
from tests.adapters import ALL_LINEAR, greedy_reply

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
def adapter_copy(doctor_adapter_dir: Path, adapter_root: Path, request) -> Path:
    """A private copy of the cheerful doctor inside the adapter root, free to break."""
    target = adapter_root / "cases" / request.node.name
    shutil.copytree(doctor_adapter_dir, target)
    return target


@pytest.fixture
def outside_copy(doctor_adapter_dir: Path, tmp_path: Path) -> Path:
    """A valid adapter outside every adapter root."""
    return Path(shutil.copytree(doctor_adapter_dir, tmp_path / "outside"))


def inspect(path, roots, kind="doctor", base=BASE, **kw):
    return inspect_adapter(str(path), list(roots), kind, base, **kw)


def edit_json(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


# ---- accepted folders ----------------------------------------------------------------------------


def test_inspect_adapter_valid_doctor_returns_manifest(doctor_adapter_dir, adapter_root):
    manifest = inspect(doctor_adapter_dir, [adapter_root])
    assert manifest.path == doctor_adapter_dir.resolve()
    assert manifest.kind == "doctor"
    assert manifest.base_model == BASE
    assert (manifest.rank, manifest.lora_alpha) == (8, 16.0)
    assert manifest.target_modules == ("q_proj", "v_proj")
    assert manifest.meta["method"] == "sft"
    assert manifest.meta["dimension"] == "cheerful"
    assert manifest.weights_file == manifest.path / WEIGHTS_FILE


def test_inspect_adapter_all_linear_doctor_lists_its_modules(second_doctor_adapter_dir, adapter_root):
    manifest = inspect(second_doctor_adapter_dir, [adapter_root])
    assert manifest.target_modules == tuple(sorted(ALL_LINEAR))


def test_inspect_adapter_patient_kind_accepted(patient_adapter_dir, adapter_root):
    assert inspect(patient_adapter_dir, [adapter_root], kind="patient").kind == "patient"


def test_inspect_adapter_relative_path_found_under_second_root(doctor_adapter_dir, adapter_root, tmp_path):
    manifest = inspect(doctor_adapter_dir.name, [tmp_path, adapter_root])
    assert manifest.path == doctor_adapter_dir.resolve()


def test_inspect_adapter_plain_peft_folder_accepted(adapter_copy, adapter_root):
    (adapter_copy / METADATA_FILE).unlink()
    manifest = inspect(adapter_copy, [adapter_root])
    assert manifest.meta == {}
    assert manifest.base_model == BASE  # from adapter_config.json's base_model_name_or_path


def test_inspect_adapter_plain_peft_folder_trained_on_converted_cache_accepted(adapter_copy, adapter_root, embedded_model):
    # what peft records when a user trains on the cached conversion of the embedded GGUF
    (adapter_copy / METADATA_FILE).unlink()
    edit_json(adapter_copy / CONFIG_FILE, base_model_name_or_path=str(embedded_model.folder))
    assert inspect(adapter_copy, [adapter_root]).base_model == BASE


def test_inspect_adapter_hub_style_base_name_accepted(adapter_copy, adapter_root):
    edit_json(adapter_copy / METADATA_FILE, base_model="HuggingFaceTB/smollm2-135m-instruct")
    assert inspect(adapter_copy, [adapter_root]).base_model == "HuggingFaceTB/smollm2-135m-instruct"


def test_inspect_adapter_symlink_inside_root_accepted(doctor_adapter_dir, adapter_root):
    link = adapter_root / "cases" / "link-to-cheerful"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(doctor_adapter_dir, target_is_directory=True)
    assert inspect(link, [adapter_root]).path == doctor_adapter_dir.resolve()


# ---- where the folder is: 403 outside the roots, 404 for nothing -----------------------------------


def test_inspect_adapter_dotdot_traversal_forbidden(outside_copy, adapter_root):
    sneaky = f"{adapter_root}/../{outside_copy.parent.name}/{outside_copy.name}"
    with pytest.raises(ForbiddenError) as err:
        inspect(sneaky, [adapter_root])
    assert err.value.param == "path"


def test_inspect_adapter_relative_dotdot_traversal_forbidden(outside_copy, adapter_root):
    relative = os.path.relpath(outside_copy, adapter_root)  # "../<tmp>/outside"
    with pytest.raises(ForbiddenError):
        inspect(relative, [adapter_root])


def test_inspect_adapter_folder_symlink_out_of_root_forbidden(outside_copy, adapter_root):
    link = adapter_root / "cases" / "escape"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(outside_copy, target_is_directory=True)
    with pytest.raises(ForbiddenError, match="outside the adapter roots"):
        inspect(link, [adapter_root])


def test_inspect_adapter_file_symlink_out_of_root_forbidden(adapter_copy, outside_copy, adapter_root):
    (adapter_copy / WEIGHTS_FILE).unlink()
    (adapter_copy / WEIGHTS_FILE).symlink_to(outside_copy / WEIGHTS_FILE)
    with pytest.raises(ForbiddenError, match=WEIGHTS_FILE):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_outside_roots_forbidden(outside_copy, adapter_root):
    with pytest.raises(ForbiddenError, match="--adapter-root"):
        inspect(outside_copy, [adapter_root])


def test_inspect_adapter_missing_path_outside_roots_forbidden_not_404(adapter_root, tmp_path):
    # 403 before any existence check: a client cannot probe the disk outside the roots.
    with pytest.raises(ForbiddenError):
        inspect(tmp_path / "no-such-folder", [adapter_root])


def test_inspect_adapter_no_roots_configured_forbidden(doctor_adapter_dir):
    with pytest.raises(ForbiddenError, match="start the server with --adapter-root DIR"):
        inspect(doctor_adapter_dir, [])


def test_inspect_adapter_missing_folder_not_found(adapter_root):
    with pytest.raises(NotFoundError) as err:
        inspect(adapter_root / "no-such-adapter", [adapter_root])
    assert err.value.param == "path"


def test_inspect_adapter_file_instead_of_folder_refused(doctor_adapter_dir, adapter_root):
    with pytest.raises(AdapterError, match="is a file"):
        inspect(doctor_adapter_dir / CONFIG_FILE, [adapter_root])


def test_inspect_adapter_nul_byte_path_refused(adapter_root):
    with pytest.raises(AdapterError):
        inspect(f"{adapter_root}/bad\0name", [adapter_root])


# ---- what the folder holds -------------------------------------------------------------------------


def test_inspect_adapter_missing_config_refused_listing_files(adapter_copy, adapter_root):
    (adapter_copy / CONFIG_FILE).unlink()
    with pytest.raises(AdapterError, match=f"no {CONFIG_FILE}.*{WEIGHTS_FILE}"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_missing_weights_refused(adapter_copy, adapter_root):
    (adapter_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match=f"no {WEIGHTS_FILE}"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_pickle_only_weights_refused(adapter_copy, adapter_root):
    torch.save(load_file(adapter_copy / WEIGHTS_FILE), adapter_copy / "adapter_model.bin")
    (adapter_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match="pickle"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_broken_safetensors_refused(adapter_copy, adapter_root):
    (adapter_copy / WEIGHTS_FILE).write_bytes(b"\xff" * 64)
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_broken_config_json_refused(adapter_copy, adapter_root):
    (adapter_copy / CONFIG_FILE).write_text('{"peft_type": "LORA", "r": 8,')
    with pytest.raises(AdapterError, match=f"{CONFIG_FILE} is not valid JSON"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_broken_metadata_json_refused(adapter_copy, adapter_root):
    (adapter_copy / METADATA_FILE).write_text("kind: doctor")
    with pytest.raises(AdapterError, match=f"{METADATA_FILE} is not valid JSON"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_non_lora_peft_type_refused(adapter_copy, adapter_root):
    edit_json(adapter_copy / CONFIG_FILE, peft_type="IA3")
    with pytest.raises(AdapterError, match="only LORA"):
        inspect(adapter_copy, [adapter_root])


@pytest.mark.parametrize("rank", [0, -8, 65, 8.0, "8", True, None])
def test_inspect_adapter_bad_rank_refused(adapter_copy, adapter_root, rank):
    edit_json(adapter_copy / CONFIG_FILE, r=rank)
    with pytest.raises(AdapterError, match="bad rank"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_rank_above_server_max_refused(doctor_adapter_dir, adapter_root):
    with pytest.raises(AdapterError, match="bad rank 8 .* from 1 to 4"):
        inspect(doctor_adapter_dir, [adapter_root], max_rank=4)


def test_inspect_adapter_config_rank_disagreeing_with_tensors_refused(adapter_copy, adapter_root):
    edit_json(adapter_copy / CONFIG_FILE, r=4)  # tensors were trained at r 8
    with pytest.raises(AdapterError, match="bad rank .* gives rank 4"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_tensor_rank_mismatch_refused(adapter_copy, adapter_root):
    tensors = load_file(adapter_copy / WEIGHTS_FILE)
    key = next(k for k in sorted(tensors) if k.endswith("lora_A.weight"))
    tensors[key] = tensors[key][:4].contiguous()  # one lora_A cut to rank 4; config still says 8
    save_file(tensors, adapter_copy / WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(AdapterError, match="bad rank .* lora_A \\[4, "):
        inspect(adapter_copy, [adapter_root])


# ---- what the folder fits: kind and base model --------------------------------------------------


def test_inspect_adapter_wrong_kind_refused(doctor_adapter_dir, adapter_root):
    with pytest.raises(AdapterError, match="is a doctor adapter .* kind 'patient' was requested") as err:
        inspect(doctor_adapter_dir, [adapter_root], kind="patient")
    assert err.value.param == "kind"


def test_inspect_adapter_unknown_kind_refused(doctor_adapter_dir, adapter_root):
    with pytest.raises(AdapterError, match="kind must be one of") as err:
        inspect(doctor_adapter_dir, [adapter_root], kind="nurse")
    assert err.value.param == "kind"


def test_inspect_adapter_wrong_base_model_refused(doctor_adapter_dir, adapter_root):
    with pytest.raises(AdapterError, match=f"trained for base model '{BASE}'.* is 'Llama-3-8B'"):
        inspect(doctor_adapter_dir, [adapter_root], base="Llama-3-8B")


def test_inspect_adapter_plain_peft_wrong_base_refused(adapter_copy, adapter_root):
    (adapter_copy / METADATA_FILE).unlink()
    edit_json(adapter_copy / CONFIG_FILE, base_model_name_or_path="meta-llama/Llama-3-8B")
    with pytest.raises(AdapterError, match="trained for base model 'meta-llama/Llama-3-8B'"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_plain_peft_without_base_refused(adapter_copy, adapter_root):
    (adapter_copy / METADATA_FILE).unlink()
    edit_json(adapter_copy / CONFIG_FILE, base_model_name_or_path=None)
    with pytest.raises(AdapterError, match="does not say which base model"):
        inspect(adapter_copy, [adapter_root])


def test_inspect_adapter_metadata_without_kind_refused(adapter_copy, adapter_root):
    edit_json(adapter_copy / METADATA_FILE, kind=None)
    with pytest.raises(AdapterError, match=f"{METADATA_FILE} kind must be one of"):
        inspect(adapter_copy, [adapter_root])


@pytest.mark.parametrize(
    ("stated", "expected", "matches"),
    [
        ("SmolLM2-135M-Instruct", BASE, True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", BASE, True),
        ("smollm2-135m-instruct/", BASE, True),
        ("SmolLM2-360M-Instruct", BASE, False),
        ("SmolLM2-135M-Instruct-v2", BASE, False),
    ],
)
def test_base_model_matches_last_component_case_insensitive(stated, expected, matches):
    assert base_model_matches(stated, expected) is matches


# ---- names and metadata ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["helpful", "concise-v2", "doc_1.0", "a" * 64])
def test_validate_adapter_name_valid_returned(name):
    assert validate_adapter_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 65, "a/b", "../x", "a b", "é", "..", None])
def test_validate_adapter_name_invalid_refused(name):
    with pytest.raises(AdapterError) as err:
        validate_adapter_name(name)
    assert err.value.param == "name"


def test_write_adapter_metadata_records_fields_and_created(tmp_path):
    write_adapter_metadata(tmp_path, "doctor", BASE, "tfpo", dimension="helpful", metrics={"acc": 0.7})
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert {k: meta[k] for k in ("kind", "base_model", "method", "dimension", "metrics")} == {
        "kind": "doctor",
        "base_model": BASE,
        "method": "tfpo",
        "dimension": "helpful",
        "metrics": {"acc": 0.7},
    }
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None


def test_write_adapter_metadata_unknown_kind_refused(tmp_path):
    with pytest.raises(AdapterError, match="kind must be one of"):
        write_adapter_metadata(tmp_path, "nurse", BASE, "dpo")


# ---- the fixtures are real adapters ----------------------------------------------------------------


QUESTION = "What is the capital of France?"  # not among the training questions


@pytest.fixture(scope="module")
def base_reply(embedded_model) -> str:
    return greedy_reply(embedded_model.folder, QUESTION, max_new_tokens=8)


@pytest.mark.parametrize("fixture", ["doctor_adapter_dir", "second_doctor_adapter_dir", "patient_adapter_dir"])
def test_fixture_adapter_changes_greedy_reply(fixture, embedded_model, base_reply, request):
    adapter_dir = request.getfixturevalue(fixture)
    assert greedy_reply(embedded_model.folder, QUESTION, adapter_dir, max_new_tokens=8) != base_reply
