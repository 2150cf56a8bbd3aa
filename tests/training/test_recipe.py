"""`llmdoctor recipe` end to end on the embedded model, CPU, at toy sizes: every stage runs for real,
an interruption resumes where it stopped, and DIR holds what the README promises."""

from __future__ import annotations

import csv
import hashlib
import json
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmdoctor.server.cli import build_parser, main
from llmdoctor.training import recipe
from llmdoctor.training.recipe import RecipeOptions, run_recipe
from tests.adapters import one_torch_thread

TOY = {"train_prompts": 6, "eval_prompts": 3, "max_tokens": 12, "epochs": 1, "betas": (2.0,), "k": 3,
       "lora_rank": 4, "target_modules": ("q_proj", "v_proj", "down_proj"), "save_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory, embedded_model) -> tuple[Path, str]:
    """A recipe run interrupted in the doctor stage, then rerun to the end; (DIR, the rerun's log)."""
    out = tmp_path_factory.mktemp("recipe") / "positivity"
    options = RecipeOptions("positivity", out, **TOY)
    real_stage = recipe.run_stage

    def ctrl_c_at_doctor(name, config, say):
        if name == "doctor":
            raise KeyboardInterrupt
        return real_stage(name, config, say)

    log = tmp_path_factory.mktemp("logs") / "rerun.log"
    with one_torch_thread():
        recipe.run_stage = ctrl_c_at_doctor
        try:
            assert run_recipe(options) == 130
        finally:
            recipe.run_stage = real_stage
        with log.open("w") as stream:
            assert run_recipe(options, stream=stream) == 0
    return out, log.read_text()


def test_recipe_rerun_skips_the_finished_stages_and_runs_the_rest(recipe_dir):
    _, rerun = recipe_dir
    assert "[1/5] data: done before, skipped" in rerun and "[2/5] rewards: done before, skipped" in rerun
    for stage in ("doctor", "dpo", "eval"):
        assert f"] {stage} ..." in rerun


def test_recipe_output_holds_the_doctor_the_dpo_adapter_the_data_and_the_eval(recipe_dir):
    out, _ = recipe_dir
    assert json.loads((out / "doctor-positivity" / "llmdoctor.json").read_text())["kind"] == "doctor"
    assert json.loads((out / "dpo-positivity" / "llmdoctor.json").read_text())["method"] == "dpo"
    assert (out / "data" / "preferences.jsonl").is_file() and (out / "data" / "token_rewards.jsonl").is_file()
    assert (out / "eval" / "frontier.png").stat().st_size > 0
    rows = {row["setting"]: row for row in csv.DictReader((out / "eval" / "eval.csv").open())}
    assert set(rows) == {"patient", "alpha@3", "positivity@2", "dpo:dpo"}  # alpha@3: the sharpening control
    assert float(rows["patient"]["kl_per_token"]) == pytest.approx(0.0, abs=1e-6)
    assert rows["positivity@2"]["mode"] == "ratio" and rows["alpha@3"]["mode"] == "product"
    state = json.loads((out / "recipe.json").read_text())
    assert all(state["stages"][stage]["done"] for stage in recipe.STAGES)
    assert {p.name for p in (out / "configs").iterdir()} == {f"{s}.yaml" for s in recipe.STAGES}


def test_recipe_records_its_command_data_seed_and_eval_row_in_the_doctor(recipe_dir):
    out, _ = recipe_dir
    made = json.loads((out / "doctor-positivity" / "llmdoctor.json").read_text())["recipe"]
    assert made["command"].startswith("llmdoctor recipe positivity --output ") and "--lora-rank 4" in made["command"]
    assert "--target-modules q_proj,v_proj,down_proj" in made["command"] and made["seed"] == 0
    assert made["data"]["sha256"] == hashlib.sha256((out / "data" / "preferences.jsonl").read_bytes()).hexdigest()
    rows = {row["setting"]: row for row in csv.DictReader((out / "eval" / "eval.csv").open())}
    assert made["eval"]["beta"] == 2.0 and made["eval"]["score"] == "score_sentiment"
    assert made["eval"]["doctor"]["kl_per_token"] == float(rows["positivity@2"]["kl_per_token"])
    assert made["eval"]["dpo"]["score"] == float(rows["dpo:dpo"]["score_sentiment"])
    # the command line parses back into the same options
    args = build_parser().parse_args(shlex.split(made["command"])[1:])
    assert recipe.options_from_args(args) == RecipeOptions("positivity", out, seed=0, **TOY)


def test_recipe_saves_bfloat16_loras_of_the_rank_and_layers_asked(recipe_dir):
    out, _ = recipe_dir
    for folder in ("doctor-positivity", "dpo-positivity"):
        weights = load_file(str(out / folder / "adapter_model.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}
        assert {k.split(".")[-3] for k in weights} == {"q_proj", "v_proj", "down_proj"}
        assert {min(t.shape) for t in weights.values()} == {4}
        config = json.loads((out / folder / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"]) == (4, 8)


def test_recipe_unknown_dimension_exits_2_listing_the_known_ones(tmp_path, capsys):
    assert main(["recipe", "kindness", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "kindness" in err and "positivity" in err and "conciseness" in err


def test_recipe_overlapping_train_and_eval_prompts_exit_2(tmp_path, capsys):
    assert main(["recipe", "positivity", "--output", str(tmp_path), "--train-prompts", "300"]) == 2
    assert "--train-prompts" in capsys.readouterr().err


def test_recipe_missing_data_file_exits_2_naming_the_flag(tmp_path, capsys):
    assert main(["recipe", "positivity", "--output", str(tmp_path), "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "--data" in capsys.readouterr().err


def test_recipe_bad_betas_exit_2_with_the_expected_form(tmp_path, capsys):
    assert main(["recipe", "positivity", "--output", str(tmp_path), "--betas", "one,two"]) == 2
    assert "--betas" in capsys.readouterr().err


def test_recipe_flags_reach_the_stage_configs(tmp_path):
    from llmdoctor.training.recipe import add_recipe_arguments, options_from_args, stage_configs
    import argparse

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    args = parser.parse_args(["conciseness", "--output", str(tmp_path), "--betas", "1,3", "--k", "3",
                              "--max-tokens", "20", "--train-prompts", "10", "--eval-prompts", "5"])
    configs = stage_configs(options_from_args(args))
    assert (configs["data"].scorer, configs["data"].k, configs["data"].limit, configs["data"].max_tokens) == (
        "length", 3, 10, 20)
    assert configs["rewards"].rewards.dimension == "conciseness"
    assert configs["eval"].betas == [1.0, 3.0] and configs["eval"].prompts.limit == 5
    assert configs["eval"].prompts.skip + 5 == 307  # the last shipped prompts, never in training


def test_each_dimension_gets_its_own_defaults_and_flags_override_them(tmp_path):
    from llmdoctor.training.recipe import add_recipe_arguments, options_from_args, stage_configs
    import argparse

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    concise = stage_configs(options_from_args(parser.parse_args(["conciseness", "--output", str(tmp_path)])))
    positive = stage_configs(options_from_args(parser.parse_args(["positivity", "--output", str(tmp_path)])))
    # conciseness: room to see an answer run on, sentence cuts; positivity: the defaults
    assert concise["data"].max_tokens == concise["eval"].generation.max_tokens == 96
    assert positive["data"].max_tokens == positive["eval"].generation.max_tokens == 48
    assert (concise["data"].limit, concise["eval"].prompts.limit) == (96, 32)
    assert concise["data"].sentence_cuts and not positive["data"].sentence_cuts
    assert (concise["doctor"].doctor.reward_scale, positive["doctor"].doctor.reward_scale) == (8.0, 1.0)
    given = options_from_args(parser.parse_args(["conciseness", "--output", str(tmp_path), "--max-tokens", "64",
                                                 "--samples-per-prompt", "3"]))
    assert given.max_tokens == 64 and given.train_prompts == 96
    assert stage_configs(given)["eval"].generation.samples_per_prompt == 3


def test_recipe_defaults_are_the_measured_winners(tmp_path):
    """Issue 16: the paper's reward signs, lr 5e-4 (at 2e-3 the TFPO loss rose and the doctor learned
    noise), doctors evaluated in ratio mode over betas that span the DPO adapter's KL."""
    from llmdoctor.training.recipe import add_recipe_arguments, options_from_args, stage_configs
    import argparse

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    positive = stage_configs(options_from_args(parser.parse_args(["positivity", "--output", str(tmp_path)])))
    concise = stage_configs(options_from_args(parser.parse_args(["conciseness", "--output", str(tmp_path)])))
    assert positive["rewards"].rewards.direction == "preference"
    assert positive["doctor"].doctor.learning_rate == positive["dpo"].alignment.learning_rate == 5e-4
    assert positive["eval"].doctor_mode == "ratio" and positive["eval"].betas == [1.0, 2.0, 4.0, 6.0]
    assert concise["eval"].betas == [0.25, 0.5, 1.0, 2.0]
    # sigmoid DPO on sentence-cut pairs stops at the first token; IPO keeps a one-sentence answer
    assert concise["dpo"].alignment.loss_type == "ipo" and positive["dpo"].alignment.loss_type == "sigmoid"


def test_recipe_samples_per_prompt_below_one_exits_2(tmp_path, capsys):
    assert main(["recipe", "positivity", "--output", str(tmp_path), "--samples-per-prompt", "0"]) == 2
    assert "--samples-per-prompt" in capsys.readouterr().err


def test_recipe_unknown_target_module_exits_2_listing_the_known_ones(tmp_path, capsys):
    assert main(["recipe", "positivity", "--output", str(tmp_path), "--target-modules", "q_proj,lm_head"]) == 2
    err = capsys.readouterr().err
    assert "--target-modules" in err and "down_proj" in err
    assert main(["recipe", "positivity", "--output", str(tmp_path), "--lora-rank", "0"]) == 2
    assert "--lora-rank" in capsys.readouterr().err
