"""training/config.py: the YAML layout, defaults, and errors that name the field and what was expected."""

from pathlib import Path

import pytest

from llmdoctor.training.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
MINIMAL = "dataset: {path: prefs.jsonl}\nalignment: {method: dpo}\n"


def write(tmp_path: Path, text: str, name: str = "align.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value


@pytest.mark.parametrize("method", ["dpo", "gdpo"])
def test_load_config_shipped_example_validates(method):
    config = load_config(REPO / "training" / "configs" / f"{method}.yaml")
    assert config.alignment.method == method
    assert config.dataset.path.parent == REPO / "training" / "data"


def test_load_config_minimal_fills_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model.path == "embedded"
    assert config.device == "cpu"
    assert (config.dataset.format, config.dataset.max_length, config.dataset.validation_fraction) == ("auto", 1024, 0)
    alignment = config.alignment
    assert (alignment.beta, alignment.loss_type, alignment.group_delay_size, alignment.group_delay_weight) == (
        0.1,
        "sigmoid",
        4,
        0.5,
    )
    assert (alignment.use_lora, alignment.lora_r, alignment.lora_alpha, alignment.target_modules) == (
        True,
        8,
        16,
        ["q_proj", "v_proj"],
    )
    assert (alignment.max_steps, alignment.eval_steps, alignment.seed) == (None, None, 42)


def test_load_config_output_dir_default_names_model_and_timestamp(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.alignment.output_dir.parent == Path("checkpoints")
    assert config.alignment.output_dir.name.startswith("SmolLM2-135M-Instruct-aligned-2")


def test_load_config_output_dir_default_uses_gguf_stem(tmp_path):
    config = load_config(write(tmp_path, "model: {path: /models/tiny.Q4.gguf}\n" + MINIMAL))
    assert config.alignment.output_dir.name.startswith("tiny.Q4-aligned-")


def test_load_config_relative_dataset_path_resolves_against_config_folder(tmp_path):
    config = load_config(write(tmp_path, "dataset: {path: ../data/p.jsonl}\nalignment: {method: dpo}\n"))
    assert config.dataset.path == tmp_path.parent / "data" / "p.jsonl"


def test_load_config_relative_model_path_resolves_against_config_folder(tmp_path):
    config = load_config(write(tmp_path, "model: {path: models/tiny}\n" + MINIMAL))
    assert config.model.path == str(tmp_path / "models" / "tiny")


def test_load_config_scientific_learning_rate_read_as_number(tmp_path):
    # YAML 1.1 reads `5e-5` (no dot) as a string; it must still mean 5e-5.
    config = load_config(write(tmp_path, "dataset: {path: p.jsonl}\nalignment: {method: dpo, learning_rate: 5e-5}\n"))
    assert config.alignment.learning_rate == 5e-5


def test_load_config_missing_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="not found") as caught:
        load_config(tmp_path / "nope.yaml")
    assert caught.value.field == "config"


def test_load_config_not_yaml_names_line_and_column(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl\nalignment: [\n")
    assert "not valid YAML at line" in error.message and "column" in error.message


def test_load_config_not_a_mapping_raises(tmp_path):
    error = error_of(tmp_path, "- dpo\n- gdpo\n")
    assert "must be a mapping with the sections model, dataset, alignment, device; got a list" in error.message


def test_load_config_empty_file_raises(tmp_path):
    assert "got an empty file" in error_of(tmp_path, "").message


def test_load_config_negative_beta_names_field_and_bound(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl}\nalignment: {method: dpo, beta: -1}\n")
    assert "alignment.beta: must be > 0, got -1" in error.message
    assert error.field == "alignment.beta"


def test_load_config_unknown_key_lists_known_keys(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl, promt_field: q}\nalignment: {method: dpo}\n")
    assert "dataset.promt_field: unknown key; known keys: path, format, prompt_field," in error.message


def test_load_config_unknown_section_lists_sections(tmp_path):
    error = error_of(tmp_path, MINIMAL + "trainer: {}\n")
    assert "trainer: unknown key; known keys: model, dataset, alignment, device" in error.message


def test_load_config_group_delay_size_below_two_refused_with_reason(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl}\nalignment: {method: gdpo, group_delay_size: 1}\n")
    assert (
        "alignment.group_delay_size: must be >= 2 (a group needs at least 2 ranked responses: "
        "a best and a worse one), got 1"
    ) in error.message


def test_load_config_missing_method_named(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl}\nalignment: {beta: 0.2}\n")
    assert "alignment.method: required, missing" in error.message


def test_load_config_bad_choice_lists_choices(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl}\nalignment: {method: ppo, loss_type: kto}\n")
    assert "alignment.method: must be one of dpo, gdpo, sft, got 'ppo'" in error.message
    assert "alignment.loss_type: must be one of sigmoid, hinge, ipo, got 'kto'" in error.message


def test_load_config_validation_fraction_one_refused(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl, validation_fraction: 1}\nalignment: {method: dpo}\n")
    assert "dataset.validation_fraction: must be < 1, got 1" in error.message


def test_load_config_wrong_type_names_expected_type(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl}\nalignment: {method: dpo, batch_size: four}\n")
    assert "alignment.batch_size: must be an integer, got 'four'" in error.message


def test_load_config_every_error_on_its_own_line(tmp_path):
    error = error_of(tmp_path, "dataset: {path: p.jsonl}\nalignment: {method: dpo, beta: 0, lora_r: 0}\ndevice: tpu\n")
    lines = error.message.splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["alignment.beta", "alignment.lora_r", "device"]


def test_load_config_missing_section_named(tmp_path):
    assert "  dataset: required, missing" in error_of(tmp_path, "alignment: {method: dpo}\n").message
