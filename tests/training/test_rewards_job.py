"""`llmdoctor train rewards` on the embedded model, CPU: token rewards for 8 cheerful-vs-gloomy pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from llmdoctor.server.cli import main
from llmdoctor.training.doctor_config import load_rewards_config
from llmdoctor.training.rewards_job import PARTIAL_SUFFIX, compute_rewards, read_reward_rows
from tests.adapters import one_torch_thread
from tests.training.test_dpo_training import CHEERFUL, GLOOMY, QUESTIONS

PAIRS = [{"prompt": q, "chosen": CHEERFUL, "rejected": GLOOMY} for q in QUESTIONS]


def write_rewards_config(folder: Path, output: str = "rewards.jsonl", **rewards) -> Path:
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    config = {
        "dataset": {"path": "pairs.jsonl"},
        "rewards": {"dimension": "positivity", "output": str(folder / output), "batch_size": 3, **rewards},
    }
    path = folder / "rewards.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory, embedded_model) -> Path:
    config = write_rewards_config(tmp_path_factory.mktemp("rewards"))
    with one_torch_thread():
        assert main(["train", "rewards", "--config", str(config)]) == 0
    return config.parent / "rewards.jsonl"


def test_train_rewards_writes_one_row_per_pair_with_a_reward_per_token(rewards_file):
    rows = read_reward_rows(rewards_file)
    assert [row["prompt"] for row in rows] == list(QUESTIONS)  # file order
    for row in rows:
        assert len(row["chosen_rewards"]) == len(row["chosen_ids"]) and len(row["rejected_rewards"]) == len(row["rejected_ids"])
        assert all(r >= 0 for r in row["chosen_rewards"]) and all(r <= 0 for r in row["rejected_rewards"])
        assert any(r > 0 for r in row["chosen_rewards"]) and any(r < 0 for r in row["rejected_rewards"])
        assert all(abs(r) < 1 for r in row["chosen_rewards"] + row["rejected_rewards"])  # tanh: |r| < 1
        assert (row["dimension"], row["model"]) == ("positivity", "SmolLM2-135M-Instruct") and row["tokenizer"]


def test_train_rewards_scores_the_tokens_of_the_plain_conversation(rewards_file, embedded_model):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    row = read_reward_rows(rewards_file)[0]
    text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                         tokenize=False)
    assert row["prompt_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]  # no face in it
    assert tokenizer.decode(row["chosen_ids"]).startswith(CHEERFUL)


def test_train_rewards_rerun_of_a_complete_file_computes_nothing(rewards_file, capsys):
    result = compute_rewards(load_rewards_config(rewards_file.parent / "rewards.yaml"))
    assert (result.rows, result.computed) == (8, 0)
    assert "nothing to do" in capsys.readouterr().err


def test_train_rewards_resumes_a_killed_run_without_losing_or_repeating_rows(rewards_file, tmp_path):
    config = load_rewards_config(write_rewards_config(tmp_path))
    done = rewards_file.read_text().splitlines(keepends=True)
    # what a kill leaves: 3 finished rows and half of the 4th line
    partial = tmp_path / ("rewards.jsonl" + PARTIAL_SUFFIX)
    partial.write_text("".join(done[:3]) + done[3][:40])
    with one_torch_thread():
        result = compute_rewards(config)
    assert (result.rows, result.computed) == (8, 5) and not partial.exists()
    resumed, uninterrupted = read_reward_rows(tmp_path / "rewards.jsonl"), read_reward_rows(rewards_file)
    assert [row["key"] for row in resumed] == [row["key"] for row in uninterrupted]
    for a, b in zip(resumed, uninterrupted, strict=True):  # other batch neighbours: equal up to float noise
        assert a["chosen_rewards"] == pytest.approx(b["chosen_rewards"], abs=1e-3)


def test_train_rewards_writes_parquet(rewards_file, tmp_path):
    config = load_rewards_config(write_rewards_config(tmp_path, output="rewards.parquet", batch_size=8))
    with one_torch_thread():
        compute_rewards(config)
    rows = read_reward_rows(tmp_path / "rewards.parquet")
    assert [row["chosen_ids"] for row in rows] == [row["chosen_ids"] for row in read_reward_rows(rewards_file)]


def test_train_rewards_dry_run_prints_the_faces_and_writes_nothing(tmp_path, embedded_model, capsys):
    config = write_rewards_config(tmp_path)
    assert main(["train", "rewards", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "positive face: You are a cheerful" in out and "rows kept: 8" in out
    assert not (tmp_path / "rewards.jsonl").exists()


def test_train_rewards_unknown_dimension_without_faces_exits_2_naming_the_field(tmp_path, capsys):
    config = write_rewards_config(tmp_path, dimension="politeness")
    assert main(["train", "rewards", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "rewards" in err and "politeness" in err and "positive_face" in err


def test_train_rewards_bad_output_suffix_exits_2(tmp_path, capsys):
    config = write_rewards_config(tmp_path, output="rewards.csv")
    assert main(["train", "rewards", "--config", str(config)]) == 2
    assert ".jsonl or .parquet" in capsys.readouterr().err


def test_train_rewards_resume_flag_is_refused_with_how_to_resume(tmp_path, capsys):
    config = write_rewards_config(tmp_path)
    assert main(["train", "rewards", "--config", str(config), "--resume", str(tmp_path)]) == 2
    assert "rerun the same command" in capsys.readouterr().err
