"""`llmdoctor train doctor` on the embedded model, CPU: a few real TFPO steps on the token rewards of
8 cheerful-vs-gloomy pairs (computed here by `train rewards`)."""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from llmdoctor.server.adapter_folders import inspect_adapter
from llmdoctor.server.cli import main
from llmdoctor.server.engine.protocol import DoctorWeight, GenerateRequest, Guidance, SamplingParams
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.training import tfpo_training
from tests.adapters import CtrlCAtStep, one_torch_thread
from tests.training.test_dpo_training import QUESTIONS
from tests.training.test_rewards_job import write_rewards_config

STEPS = 6


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory, embedded_model) -> Path:
    config = write_rewards_config(tmp_path_factory.mktemp("doctor-rewards"), batch_size=8)
    with one_torch_thread():
        assert main(["train", "rewards", "--config", str(config)]) == 0
    return config.parent / "rewards.jsonl"


def write_doctor_config(folder: Path, rewards: Path, **doctor) -> Path:
    config = {
        "data": {"path": str(rewards)},
        "doctor": {"output_dir": str(folder / "doctor"), "batch_size": 4,
                   "max_steps": STEPS, "save_steps": 3, "seed": 0, **doctor},
    }
    path = folder / "doctor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def doctor(tmp_path_factory, rewards_file) -> Path:
    config = write_doctor_config(tmp_path_factory.mktemp("doctor"), rewards_file)
    with one_torch_thread():
        assert main(["train", "doctor", "--config", str(config)]) == 0
    return config.parent / "doctor"


def _steps(out: Path) -> list[dict]:
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [log for log in logs if "tfpo/subtb" in log and "eval_loss" not in log]


def test_train_doctor_writes_a_doctor_adapter_the_server_accepts(doctor, embedded_model):
    manifest = inspect_adapter(str(doctor), [doctor.parent], "doctor", embedded_model.name)
    assert (manifest.meta["method"], manifest.meta["dimension"]) == ("tfpo", "positivity")
    assert manifest.meta["metrics"]["tfpo"]["policy_term"] == "log_ratio"
    assert set(load_file(str(doctor / tfpo_training.VALUE_HEAD_FILE))) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_train_doctor_logs_every_step_and_starts_from_the_patient(doctor):
    steps = _steps(doctor)
    assert [log["step"] for log in steps] == list(range(1, STEPS + 1))
    # step 1: LoRA B = 0, so the doctor is the patient and its implicit rewards are all 0
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    # each epoch is 2 steps over the same 8 rows: compare the first epoch's mean loss with the last's
    assert sum(log["tfpo/subtb"] for log in steps[-2:]) < sum(log["tfpo/subtb"] for log in steps[:2])


def test_train_doctor_learns_to_prefer_the_chosen_responses(doctor):
    metrics = json.loads((doctor / "llmdoctor.json").read_text())["metrics"]
    assert metrics["steps"] == STEPS
    assert metrics["reward_accuracy"] > 0.5 and metrics["reward_margin"] > 0


def test_train_doctor_checkpoints_hold_the_adapter_and_the_value_head(doctor):
    checkpoint = doctor / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / tfpo_training.VALUE_HEAD_FILE).is_file()
    assert not (checkpoint / "model.safetensors").exists()  # never the frozen base's weights


async def test_train_doctor_guides_the_patient_in_the_engine(doctor, embedded_model):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    engine = TorchEngine(embedded_model, max_batch=4, max_queue=8)
    with one_torch_thread():
        await engine.start()
        await engine.load_adapter("positivity", str(doctor), "doctor")
        try:
            bare, guided = [await asyncio.gather(*(_greedy(engine, tokenizer, q, beta) for q in QUESTIONS[:4]))
                            for beta in (0.0, 8.0)]
        finally:
            await engine.shutdown(grace_seconds=1)
    assert bare != guided  # a few training steps already move some greedy answer (ratio mode: the tilt x 8)


async def _greedy(engine, tokenizer, question: str, beta: float) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    guidance = Guidance(doctors=(DoctorWeight("positivity", beta, "ratio"),))
    request = GenerateRequest(f"tfpo-{beta}-{question}", ids, SamplingParams(max_tokens=16, temperature=0.0), guidance)
    return [token async for event in engine.generate(request) for token in event.token_ids]


def test_train_doctor_ctrl_c_then_resume_ends_with_the_uninterrupted_weights(doctor, rewards_file, tmp_path,
                                                                             monkeypatch, capsys):
    config = write_doctor_config(tmp_path, rewards_file)  # the same run as `doctor`, interrupted after step 2
    build = tfpo_training.build_trainer

    def build_with_ctrl_c(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(CtrlCAtStep(2))
        return trainer

    monkeypatch.setattr(tfpo_training, "build_trainer", build_with_ctrl_c)
    with one_torch_thread():
        assert main(["train", "doctor", "--config", str(config)]) == 130
    command = capsys.readouterr().err.split("resume with:\n", 1)[1].strip()
    monkeypatch.setattr(tfpo_training, "build_trainer", build)
    with one_torch_thread():
        assert main(shlex.split(command)[1:]) == 0
    for name in ("adapter_model.safetensors", tfpo_training.VALUE_HEAD_FILE):
        resumed, uninterrupted = load_file(str(tmp_path / "doctor" / name)), load_file(str(doctor / name))
        assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted), name


def test_train_doctor_dry_run_reports_the_rewards_and_writes_nothing(rewards_file, tmp_path, capsys):
    config = write_doctor_config(tmp_path, rewards_file)
    assert main(["train", "doctor", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 rows kept" in out and "dimension positivity" in out
    assert not (tmp_path / "doctor").exists()


def test_train_doctor_on_a_preference_file_exits_2_naming_the_missing_fields(tmp_path, capsys):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    config = write_doctor_config(tmp_path, tmp_path / "pairs.jsonl")
    assert main(["train", "doctor", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "chosen_rewards" in err and "llmdoctor train rewards" in err


def test_train_doctor_refuses_rewards_from_a_patient_with_another_tokenizer(rewards_file, tmp_path, capsys):
    rows = [{**json.loads(line), "tokenizer": "0000000000000000", "model": "other-model"}
            for line in rewards_file.read_text().splitlines()]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = write_doctor_config(tmp_path, tmp_path / "r.jsonl")
    assert main(["train", "doctor", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "model.path" in err and "other-model" in err and "tokenizer" in err
