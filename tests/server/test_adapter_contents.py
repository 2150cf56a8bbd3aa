"""server/adapter_contents.py: what an adapter's files may hold, checked against the model's layers.

Bad folders are the real cheerful doctor (r 8 on q_proj/v_proj) copied and then broken one way each;
every refusal is an AdapterError (HTTP 400) naming the option at fault.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmdoctor.server.adapter_contents import CONFIG_FILE, WEIGHTS_FILE, linear_shapes
from llmdoctor.server.adapter_folders import inspect_adapter, read_adapter
from llmdoctor.server.errors import AdapterError

BASE = "SmolLM2-135M-Instruct"
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture
def folder(doctor_adapter_dir: Path, adapter_root: Path, request) -> Path:
    target = adapter_root / "contents" / request.node.name.replace("[", "-").replace("]", "")
    shutil.copytree(doctor_adapter_dir, target)
    return target


@pytest.fixture(scope="module")
def shapes(embedded_model):
    return linear_shapes(embedded_model.folder)


def check(folder: Path, root: Path, shapes) -> None:
    inspect_adapter(str(folder), [root], "doctor", BASE, 64, shapes)


def edit_config(folder: Path, **changes) -> None:
    file = folder / CONFIG_FILE
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def edit_tensors(folder: Path, edit) -> None:
    tensors = load_file(folder / WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, folder / WEIGHTS_FILE)


def refused(folder: Path, root: Path, shapes) -> AdapterError:
    with pytest.raises(AdapterError) as err:
        check(folder, root, shapes)
    return err.value


def test_linear_shapes_come_from_the_model_header(shapes):
    assert shapes["model.layers.0.self_attn.q_proj"] == (576, 576)
    assert shapes["model.layers.0.self_attn.k_proj"] == (192, 576)
    assert "model.embed_tokens" not in shapes and not any(m.endswith("norm") for m in shapes)


def test_contents_fixture_adapters_accepted(doctor_adapter_dir, second_doctor_adapter_dir, adapter_root, shapes):
    check(doctor_adapter_dir, adapter_root, shapes)
    check(second_doctor_adapter_dir, adapter_root, shapes)


def test_read_adapter_returns_the_bytes_it_checked(doctor_adapter_dir, adapter_root, shapes):
    checked = read_adapter(str(doctor_adapter_dir), [adapter_root], "doctor", BASE, 64, shapes)
    assert checked.weights == (doctor_adapter_dir / WEIGHTS_FILE).read_bytes()
    assert checked.config == json.loads((doctor_adapter_dir / CONFIG_FILE).read_text())


@pytest.mark.parametrize(("option", "value"), [
    ("use_dora", True),
    ("modules_to_save", ["lm_head"]),
    ("bias", "all"),
    ("lora_bias", True),
    ("fan_in_fan_out", True),
    ("layers_to_transform", [0, 1]),
    ("trainable_token_indices", [1, 2]),
    ("init_lora_weights", "pissa"),
    ("layer_replication", [[0, 4]]),
])
def test_contents_unbatchable_option_refused_naming_it(folder, adapter_root, shapes, option, value):
    edit_config(folder, **{option: value})
    error = refused(folder, adapter_root, shapes)
    assert error.param == option and option in error.message


@pytest.mark.parametrize(("option", "value"), [
    ("lora_alpha", "16"), ("lora_alpha", True), ("use_rslora", "yes"), ("use_dora", "false"),
    ("target_modules", "q_proj|v_proj"), ("rank_pattern", [1]), ("lora_dropout", None),
])
def test_contents_option_of_wrong_type_refused_naming_it(folder, adapter_root, shapes, option, value):
    edit_config(folder, **{option: value})
    assert refused(folder, adapter_root, shapes).param == option


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_contents_embedding_or_head_target_refused(folder, adapter_root, shapes, target):
    edit_config(folder, target_modules=["q_proj", "v_proj", target])
    error = refused(folder, adapter_root, shapes)
    assert error.param == "target_modules" and target in error.message


def test_contents_target_module_the_model_lacks_refused(folder, adapter_root, shapes):
    edit_config(folder, target_modules=["q_proj", "v_proj", "c_attn"])
    error = refused(folder, adapter_root, shapes)
    assert error.param == "target_modules" and "c_attn" in error.message


def test_contents_missing_tensor_refused(folder, adapter_root, shapes):
    edit_tensors(folder, lambda t: [t.pop(f"{Q0}.lora_A.weight"), t.pop(f"{Q0}.lora_B.weight")])
    error = refused(folder, adapter_root, shapes)
    assert error.param == "target_modules" and "missing ['model.layers.0.self_attn.q_proj']" in error.message


def test_contents_tensor_for_an_undeclared_module_refused(folder, adapter_root, shapes):
    k0 = Q0.replace("q_proj", "k_proj")
    edit_tensors(folder, lambda t: t.update({f"{k0}.lora_A.weight": torch.zeros(8, 576),
                                             f"{k0}.lora_B.weight": torch.zeros(192, 8)}))
    error = refused(folder, adapter_root, shapes)
    assert "extra ['model.layers.0.self_attn.k_proj']" in error.message


def test_contents_tensor_that_is_not_lora_refused(folder, adapter_root, shapes):
    edit_tensors(folder, lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(4, 576)}))
    assert "lm_head.weight" in refused(folder, adapter_root, shapes).message


def test_contents_shape_not_matching_the_model_refused(folder, adapter_root, shapes):
    # rank still 8 on both sides, so only the model's shapes can tell
    edit_tensors(folder, lambda t: t.update({f"{Q0}.lora_A.weight": torch.zeros(8, 500),
                                             f"{Q0}.lora_B.weight": torch.zeros(500, 8)}))
    error = refused(folder, adapter_root, shapes)
    assert "[576, 576]" in error.message and "q_proj" in error.message


def test_contents_rank_pattern_key_that_is_a_regex_refused_at_once(folder, adapter_root, shapes):
    edit_config(folder, rank_pattern={"(a+)+$": 8, "x" * 40 + "!": 4})
    started = time.monotonic()
    error = refused(folder, adapter_root, shapes)
    assert error.param == "rank_pattern" and time.monotonic() - started < 1.0


def test_contents_alpha_pattern_key_naming_no_module_refused(folder, adapter_root, shapes):
    edit_config(folder, alpha_pattern={"c_attn": 32})
    assert refused(folder, adapter_root, shapes).param == "alpha_pattern"


def test_contents_rank_pattern_naming_a_module_accepted_with_its_rank(folder, adapter_root, shapes):
    def shrink_layer0_q(t):
        t[f"{Q0}.lora_A.weight"] = t[f"{Q0}.lora_A.weight"][:4].contiguous()
        t[f"{Q0}.lora_B.weight"] = t[f"{Q0}.lora_B.weight"][:, :4].contiguous()

    edit_tensors(folder, shrink_layer0_q)
    edit_config(folder, rank_pattern={"model.layers.0.self_attn.q_proj": 4})
    check(folder, adapter_root, shapes)


def test_contents_unknown_option_left_unset_accepted(folder, adapter_root, shapes):
    edit_config(folder, some_future_option=None)
    check(folder, adapter_root, shapes)


def test_contents_unknown_option_set_refused_naming_it(folder, adapter_root, shapes):
    edit_config(folder, some_future_option={"on": True})
    assert refused(folder, adapter_root, shapes).param == "some_future_option"
