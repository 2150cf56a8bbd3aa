"""`llmdoctor eval`: settings, distinct-n, the teacher-forced KL, config errors, and one real run on
the embedded model with the cheerful and terse test doctors and the pirate patient adapter."""

import asyncio
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from llmdoctor.server.cli import main
from llmdoctor.training.config import ConfigError
from llmdoctor.training.eval_config import load_eval_config
from llmdoctor.server.engine.decode_rule import combine_logprobs
from llmdoctor.training.eval_metrics import BASE, TeacherForcer, distinct_n, kl_divergence, rule_kl
from llmdoctor.training.eval_settings import plan_settings
from llmdoctor.training.evaluate import EXIT_USAGE
from llmdoctor.training.synth import PROMPTS_FILE
from tests.adapters import one_torch_thread

PROMPTS = ["Describe your ideal weekend.", "What do you think about rainy days?", "Give advice to a new cook."]


def write(tmp_path: Path, text: str, name: str = "eval.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_eval_config(write(tmp_path, text))
    return caught.value


# ---------------------------------------------------------------- settings


def test_plan_settings_two_doctors_sweep_grid_and_adapter_each_once():
    names = [s.name for s in plan_settings(["a", "b"], ["pirate"], [0.5, 1.0], [0.0, 1.0])]
    assert names == ["patient", "a@0.5", "a@1", "b@0.5", "b@1", "a@1+b@1", "dpo:pirate"]


def test_plan_settings_no_doctors_is_the_patient_alone():
    assert [s.name for s in plan_settings([], [], [0.5], [0.0, 1.0])] == ["patient"]


def test_plan_settings_grid_zero_beta_adds_the_missing_single_doctor_setting():
    settings = plan_settings(["a", "b"], [], [1.0], [0.0, 2.0])
    assert [s.name for s in settings] == ["patient", "a@1", "a@2", "b@1", "b@2", "a@2+b@2"]
    assert settings[-1].kind == "grid" and settings[-1].betas == {"a": 2.0, "b": 2.0}


# ---------------------------------------------------------------- distinct-n and KL


def test_distinct_n_counts_unique_over_total_whitespace_ngrams():
    texts = ["a b a", "a b"]
    assert distinct_n(texts, 1) == 2 / 5  # unigrams a b a a b
    assert distinct_n(texts, 2) == 2 / 3  # bigrams (a b) (b a) (a b)


def test_distinct_n_no_ngrams_is_zero():
    assert distinct_n(["", "one"], 2) == 0.0


def test_rule_kl_hand_case_matches_the_formula():
    patient = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # (T=1, V=3)
    doctor = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]]))  # (D=1, T=1, V=3)
    # rule at beta 1: p ∝ p_patient * p_doctor = (1/8, 1/16, 1/8) -> (0.4, 0.2, 0.4)
    expected = 0.4 * math.log(0.4 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.4 * math.log(0.4 / 0.25)
    assert rule_kl(patient, doctor, 1.0, [1.0]).item() == pytest.approx(expected, rel=1e-6)


def test_rule_kl_all_betas_zero_is_exactly_zero():
    patient = torch.log_softmax(torch.randn(4, 50), dim=-1)
    doctors = torch.log_softmax(torch.randn(2, 4, 50), dim=-1)
    assert rule_kl(patient, doctors, 1.0, [0.0, 0.0]).abs().max() < 1e-6  # a re-normalisation's rounding
    assert torch.equal(rule_kl(patient, doctors[:0], 1.0, []), torch.zeros(4))


def test_kl_divergence_same_distribution_is_zero_and_otherwise_positive():
    p = torch.log_softmax(torch.randn(3, 20), dim=-1)
    q = torch.log_softmax(torch.randn(3, 20), dim=-1)
    assert torch.equal(kl_divergence(p, p), torch.zeros(3))
    assert (kl_divergence(p, q) > 0).all()


@pytest.mark.parametrize("mode", ["product", "ratio"])
def test_teacher_forcer_rule_logprobs_match_the_engine(embedded_model, doctor_adapter_dir, mode):
    """Teacher forcing scores the positions the engine sampled from: its rule log-probs of the sampled
    tokens equal those the engine reported (so the KL is of the distribution actually decoded), in
    either guidance mode (ratio: the patient's weight in the rule is alpha - beta)."""
    from transformers import AutoTokenizer

    from llmdoctor.server.engine.protocol import DoctorWeight, GenerateRequest, Guidance, SamplingParams
    from llmdoctor.server.engine.torch_engine import TorchEngine

    async def sample(prompt_ids):
        engine = TorchEngine(embedded_model, max_batch=2)
        await engine.start()
        await engine.load_adapter("cheerful", str(doctor_adapter_dir), "doctor")
        guidance = Guidance(1.0, (DoctorWeight("cheerful", 1.5, mode),))
        request = GenerateRequest("r", prompt_ids, SamplingParams(6, 1.0, seed=3, logprobs=0), guidance)
        tokens, logprobs = [], []
        async for event in engine.generate(request):
            tokens += event.token_ids
            logprobs += [lp.logprob for lp in event.logprobs or ()]
        await engine.shutdown(grace_seconds=0)
        return tokens, logprobs

    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                         tokenize=False)
    prompt_ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    with one_torch_thread():
        tokens, engine_logprobs = asyncio.run(sample(prompt_ids))
        logprobs = TeacherForcer(embedded_model.folder, {"cheerful": doctor_adapter_dir}).response_logprobs(
            prompt_ids, tokens, [BASE, "cheerful"])
    rule_alpha = 1.0 - 1.5 if mode == "ratio" else 1.0
    rule = combine_logprobs(logprobs[0], logprobs[1:].transpose(0, 1), rule_alpha,
                            torch.tensor([1.5]).expand(len(tokens), 1))
    forced = rule[torch.arange(len(tokens)), torch.tensor(tokens)]
    assert forced.tolist() == pytest.approx(engine_logprobs, abs=1e-3)


# ---------------------------------------------------------------- config


def test_load_eval_config_shipped_example_validates():
    config = load_eval_config(Path(__file__).resolve().parents[2] / "training" / "configs" / "eval.yaml")
    assert config.prompts.path == PROMPTS_FILE and (config.prompts.skip, config.prompts.limit) == (256, 48)


def test_load_eval_config_defaults_and_relative_paths(tmp_path):
    (tmp_path / "docs").mkdir()
    config = load_eval_config(write(tmp_path, "doctors: {cheerful: docs/cheerful}\nprompts: {path: p.jsonl}\n"))
    assert config.doctors["cheerful"] == tmp_path / "docs" / "cheerful"
    assert config.prompts.path == tmp_path / "p.jsonl"
    assert (config.alpha, config.scorers, config.generation.max_tokens) == (1.0, ["sentiment", "length"], 48)


def test_load_eval_config_unknown_scorer_names_field_and_lists_known(tmp_path):
    error = error_of(tmp_path, "scorers: [sentiment, charm]\n")
    assert error.field == "scorers"
    assert "charm" in str(error) and "length_long" in str(error)


def test_load_eval_config_unknown_key_lists_eval_keys(tmp_path):
    error = error_of(tmp_path, "generation: {max_token: 8}\n")
    assert error.field == "generation.max_token"
    assert "samples_per_prompt" in str(error)


def test_load_eval_config_bad_value_names_dotted_field(tmp_path):
    assert error_of(tmp_path, "generation: {top_p: 0}\n").field == "generation.top_p"
    assert error_of(tmp_path, "device: tpu\n").field == "device"


def test_eval_cli_config_error_exits_2_naming_the_field(tmp_path, capsys):
    assert main(["eval", "--config", str(write(tmp_path, "prompts: {limit: 0}\n"))]) == EXIT_USAGE
    assert "prompts.limit" in capsys.readouterr().err


def test_eval_cli_doctor_that_is_a_patient_adapter_exits_2(tmp_path, capsys, patient_adapter_dir):
    prompts = write(tmp_path, json.dumps({"prompt": PROMPTS[0]}) + "\n", "p.jsonl")
    config = write(tmp_path, f"prompts: {{path: {prompts}}}\ndoctors: {{pirate: {patient_adapter_dir}}}\n")
    assert main(["eval", "--config", str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "doctors.pirate" in err and "patient adapter" in err


# ---------------------------------------------------------------- a real run


def test_eval_cli_end_to_end_writes_frontier(
    tmp_path, capsys, doctor_adapter_dir, second_doctor_adapter_dir, patient_adapter_dir
):
    prompts = write(tmp_path, "".join(json.dumps({"prompt": p}) + "\n" for p in ["unused", *PROMPTS]), "p.jsonl")
    config = write(tmp_path, f"""
prompts: {{path: {prompts.name}, skip: 1, limit: 3}}
doctors: {{cheerful: {doctor_adapter_dir}, terse: {second_doctor_adapter_dir}}}
patient_adapters: {{pirate: {patient_adapter_dir}}}
betas: [0.5, 3.0]
grid_betas: [0.0, 1.0]
scorers: [sentiment, length]
generation: {{max_tokens: 8, max_batch: 8}}
output_dir: {tmp_path / "out"}
""")
    with one_torch_thread():
        assert main(["eval", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    rows = {row["setting"]: row for row in csv.DictReader((tmp_path / "out" / "eval.csv").open())}
    assert list(rows) == ["patient", "cheerful@0.5", "cheerful@1", "cheerful@3", "terse@0.5", "terse@1", "terse@3",
                          "cheerful@1+terse@1", "dpo:pirate"]
    assert float(rows["patient"]["kl_per_token"]) == 0.0
    assert 0 < float(rows["cheerful@0.5"]["kl_per_token"]) < float(rows["cheerful@3"]["kl_per_token"])
    assert float(rows["dpo:pirate"]["kl_per_token"]) > 0
    assert rows["cheerful@1+terse@1"]["beta_cheerful"] == rows["cheerful@1+terse@1"]["beta_terse"] == "1.0"
    assert all(row["n"] == "3" and float(row["tokens_per_s"]) > 0 for row in rows.values())
    assert (tmp_path / "out" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * len(rows) and {s["prompt"] for s in samples} == set(PROMPTS)
    assert "cheerful@3" in captured.out and "generated cheerful@3" in captured.err
    compared = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert [(r["doctor"], r["scorer"]) for r in compared] == [
        ("cheerful", "sentiment"), ("cheerful", "length"), ("terse", "sentiment"), ("terse", "length")]
    assert all(r["adapter"] == "dpo:pirate" and r["kl_per_token"] == rows["dpo:pirate"]["kl_per_token"]
               for r in compared)
    for doctor in ("cheerful", "terse"):
        assert f"{doctor} doctor at dpo:pirate's KL" in captured.out


def test_plan_settings_mode_reaches_every_guided_setting_and_its_rule_alpha():
    settings = {s.name: s for s in plan_settings(["a", "b"], [], [2.0], [0.0, 1.0], controls=True, mode="ratio")}
    assert settings["a@2"].mode == "ratio" and settings["a@2"].rule_alpha == -1.0
    assert settings["a@1+b@1"].mode == "ratio" and settings["a@1+b@1"].rule_alpha == -1.0
    assert settings["alpha@3"].mode == "product" and settings["alpha@3"].rule_alpha == 3.0  # no doctor: no ratio
    assert settings["patient"].rule_alpha == 1.0
    assert plan_settings(["a"], [], [2.0], [])[1].rule_alpha == 1.0  # product, the default


def test_eval_config_doctor_mode_defaults_to_ratio_and_names_a_bad_value(tmp_path):
    assert load_eval_config(write(tmp_path, "doctors: {}\n")).doctor_mode == "ratio"
    error = error_of(tmp_path, "doctor_mode: sharpen\n")
    assert error.field == "doctor_mode" and "ratio" in str(error)


def test_plan_settings_controls_add_the_patient_sharpened_by_each_beta():
    settings = plan_settings(["a"], [], [0.5, 2.0], [], controls=True)
    assert [s.name for s in settings] == ["patient", "alpha@1.5", "alpha@3", "a@0.5", "a@2"]
    control = settings[2]
    assert (control.kind, control.alpha, control.doctors) == ("control", 3.0, ())
