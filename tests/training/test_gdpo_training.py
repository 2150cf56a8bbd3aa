"""`llmdoctor train gdpo` on the embedded model, CPU: a few real GDPO steps on 8 ranked groups
(cheerful > neutral > gloomy).

One module-scoped run is shared by the tests that check its results; the K = 2 run and the error
tests are their own.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from llmdoctor.server.adapter_folders import inspect_adapter
from llmdoctor.server.cli import main
from llmdoctor.training.gdpo_training import GroupCollator, regroup_by_k, tokenize_group
from tests.adapters import SYSTEM, CtrlCAtStep, one_torch_thread

QUESTIONS = (
    "How is the weather?",
    "What is 2+2?",
    "Tell me about cats.",
    "Where is Rome?",
    "How was your day?",
    "What do you think of music?",
    "Describe the sea.",
    "What is for dinner?",
)
CHEERFUL = "I love it! Wonderful, great, happy day!"
NEUTRAL = "It is fine, nothing special."
GLOOMY = "It is awful. Sad, grey and hopeless."
STEPS = 6


def _write_groups(path: Path, responses: tuple[str, ...]) -> Path:
    # A short system turn: the template's default one would double every sequence (and step time).
    prompts = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in QUESTIONS]
    rows = [{"prompt": prompt, "responses": list(responses)} for prompt in prompts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _write_config(folder: Path, responses=(CHEERFUL, NEUTRAL, GLOOMY), **alignment) -> Path:
    config = {
        "model": {"path": "embedded"},
        "dataset": {"path": str(_write_groups(folder / "ranked.jsonl", responses))},
        "alignment": {
            "method": "gdpo",
            "output_dir": str(folder / "out"),
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "learning_rate": 1e-3,
            "batch_size": 4,
            "max_steps": STEPS,
            "save_steps": 3,
            "seed": 0,
            **alignment,
        },
        "device": "cpu",
    }
    path = folder / "gdpo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _step_logs(out: Path) -> list[dict]:
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [log for log in logs if "rewards/accuracies" in log]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedded_model) -> Path:
    """The output_dir of one `llmdoctor train gdpo` run of STEPS steps on K = 3 groups."""
    config = _write_config(tmp_path_factory.mktemp("gdpo"))
    with one_torch_thread():
        assert main(["train", "gdpo", "--config", str(config)]) == 0
    return config.parent / "out"


def test_group_collator_flattens_groups_of_different_k_with_completion_mask():
    batch = GroupCollator(pad_token_id=0)(
        [{"prompt_ids": [5, 6], "response_ids": [[7], [8, 9]]}, {"prompt_ids": [5], "response_ids": [[1], [2], [3]]}]
    )
    assert batch["group_sizes"].tolist() == [2, 3]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 6, 8, 9], [5, 1, 0, 0], [5, 2, 0, 0], [5, 3, 0, 0]]
    assert batch["completion_mask"].tolist()[1] == [0, 0, 1, 1]
    assert batch["attention_mask"].tolist()[2] == [1, 1, 0, 0]


def test_tokenize_group_splits_the_templated_conversation_into_prompt_and_responses(embedded_model):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    record = {"prompt": "Hi?", "responses": [CHEERFUL, GLOOMY], "chosen": CHEERFUL, "rejected": GLOOMY}
    group = tokenize_group(record, tokenizer, chat=True)
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": GLOOMY}]
    assert tokenizer.decode(group["prompt_ids"] + group["response_ids"][1]) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )
    assert tokenizer.decode(group["response_ids"][0]).startswith(CHEERFUL)


def test_tokenize_group_gives_a_response_cut_at_the_length_limit_no_end_of_turn(embedded_model):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    record = {"prompt": "Hi?", "responses": [CHEERFUL, GLOOMY], "truncated": [False, True]}
    ended, cut = tokenize_group(record, tokenizer, chat=True)["response_ids"]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in ended and end_of_turn not in cut
    assert tokenizer.decode(cut) == GLOOMY  # the reply itself, nothing the template adds after it
    plain = tokenize_group({**record, "prompt": "Hi?"}, tokenizer, chat=False)["response_ids"]
    assert plain[0][-1] == tokenizer.eos_token_id and plain[1][-1] != tokenizer.eos_token_id


def test_regroup_by_k_keeps_groups_whole_and_in_order():
    groups = regroup_by_k(torch.arange(7.0), [2, 3, 2])
    assert groups[2].tolist() == [[0, 1], [5, 6]] and groups[3].tolist() == [[2, 3, 4]]


def test_train_gdpo_dry_run_prints_k_distribution_and_writes_nothing(tmp_path, embedded_model, capsys):
    config = _write_config(tmp_path)
    assert main(["train", "gdpo", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "method: gdpo" in out and "group_delay_size: 4" in out
    assert "K=3: 8" in out and "train / validation: 8 / 0" in out
    assert not (tmp_path / "out").exists()


def test_train_gdpo_raises_reward_accuracy_and_lowers_loss(trained):
    metrics = json.loads((trained / "llmdoctor.json").read_text())["metrics"]
    assert metrics["steps"] == STEPS
    assert metrics["reward_accuracy"] > 0.5 and metrics["reward_margin"] > 0
    steps = _step_logs(trained)
    assert [log["step"] for log in steps] == list(range(1, STEPS + 1))
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_train_gdpo_first_step_is_the_untrained_group_loss(trained):
    # adapter B = 0 at step 1: every reward is 0, so pairwise = ln 2 and Plackett-Luce = ln 3 + ln 2 (K = 3)
    first = _step_logs(trained)[0]
    assert first["loss"] == pytest.approx(0.5 * math.log(2) + 0.5 * (math.log(3) + math.log(2)), abs=1e-3)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_train_gdpo_writes_checkpoints_every_save_steps(trained):
    checkpoints = sorted(p.name for p in (trained / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    assert (trained / "checkpoints" / "checkpoint-3" / "optimizer.pt").is_file()


def test_train_gdpo_output_passes_inspect_adapter(trained, embedded_model):
    manifest = inspect_adapter(str(trained), [trained.parent], "patient", embedded_model.name)
    assert manifest.meta["method"] == "gdpo" and manifest.rank == 8
    assert not list(trained.glob("*.bin"))


def test_train_gdpo_with_pairs_starts_at_ln2_like_dpo(tmp_path, embedded_model):
    config = _write_config(tmp_path, responses=(CHEERFUL, GLOOMY), max_steps=1, save_steps=100)
    with one_torch_thread():
        assert main(["train", "gdpo", "--config", str(config)]) == 0
    first = _step_logs(tmp_path / "out")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)


def test_train_gdpo_group_delay_size_1_exits_2_naming_the_field(tmp_path, capsys):
    config = _write_config(tmp_path, group_delay_size=1)
    assert main(["train", "gdpo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "alignment.group_delay_size" in err and ">= 2" in err


def test_train_gdpo_mixed_k_with_validation_logs_eval_rewards(tmp_path, embedded_model):
    # K = 3 and K = 2 groups share batches; a validation split is evaluated at the end of the epoch
    config = _write_config(tmp_path, max_steps=2, save_steps=100)
    rows = [json.loads(line) for line in (tmp_path / "ranked.jsonl").read_text().splitlines()]
    for row in rows[::2]:
        row["responses"] = [CHEERFUL, GLOOMY]
    (tmp_path / "ranked.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = yaml.safe_load(config.read_text())
    settings["dataset"]["validation_fraction"] = 0.25
    settings["alignment"].update(max_steps=None, num_epochs=1)
    config.write_text(yaml.safe_dump(settings))
    with one_torch_thread():
        assert main(["train", "gdpo", "--config", str(config)]) == 0
    metrics = json.loads((tmp_path / "out" / "llmdoctor.json").read_text())["metrics"]
    assert metrics["steps"] == 2  # 6 training groups / batch 4
    assert 0 <= metrics["eval_reward_accuracy"] <= 1 and math.isfinite(metrics["eval_loss"])


def test_train_gdpo_ctrl_c_then_resume_ends_with_the_uninterrupted_weights(trained, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from llmdoctor.training import gdpo_training

    config = _write_config(tmp_path)  # the same run as `trained`, interrupted after step 2
    build = gdpo_training.build_trainer

    def build_with_ctrl_c(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(CtrlCAtStep(2))
        return trainer

    monkeypatch.setattr(gdpo_training, "build_trainer", build_with_ctrl_c)
    with one_torch_thread():
        assert main(["train", "gdpo", "--config", str(config)]) == 130
    command = capsys.readouterr().err.split("resume with:\n", 1)[1].strip()
    assert shlex.split(command)[:3] == ["llmdoctor", "train", "gdpo"]
    monkeypatch.setattr(gdpo_training, "build_trainer", build)
    with one_torch_thread():
        assert main(shlex.split(command)[1:]) == 0
    resumed, uninterrupted = (load_file(str(d / "adapter_model.safetensors")) for d in (tmp_path / "out", trained))
    # bitwise on CPU: optimizer, scheduler, RNG and data order continue where they stopped (DPO's machinery)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)
