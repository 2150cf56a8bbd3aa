"""`llmdoctor train sft` on the embedded model, CPU: a real LoRA SFT run on the shipped topic rows
(training/data/topics.jsonl), served as a patient adapter, beating the bare patient on held-out rows.

One module-scoped run (~1 min) is shared by the tests that check its results; the error tests stop before any
model loads, and the Ctrl+C / resume test makes a short run of its own.
"""

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
from llmdoctor.server.engine.protocol import GenerateRequest, Guidance, SamplingParams
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.training import sft_training
from llmdoctor.training.config import DatasetConfig, load_config
from llmdoctor.training.sft_data import load_sft
from llmdoctor.training.trainer_runs import resolve_patient
from tests.adapters import CtrlCAtStep, one_torch_thread

TOPICS = Path(sft_training.__file__).parent / "data" / "topics.jsonl"
ROWS = [json.loads(line) for line in TOPICS.read_text().splitlines()]
TRAIN, HELD_OUT = ROWS[:200], ROWS[-40:]  # the file interleaves the labels: every slice has all four
STEPS = 25  # one epoch of 200 rows at batch 8


def _write_config(folder: Path, rows: list[dict], **alignment) -> Path:
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {
        "model": {"path": "embedded"},
        "dataset": {"path": str(folder / "rows.jsonl"), "label_field": "label", "max_length": 256},
        "alignment": {"method": "sft", "output_dir": str(folder / "out"), "lora_r": 8, "lora_alpha": 16,
                      "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                      "learning_rate": 5e-4, "batch_size": 8, "save_steps": 10, "seed": 0, **alignment},
        "device": "cpu",
    }
    path = folder / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedded_model) -> Path:
    config = _write_config(tmp_path_factory.mktemp("sft"), TRAIN)
    with one_torch_thread():
        assert main(["train", "sft", "--config", str(config)]) == 0
    return config.parent / "out"


def test_the_loss_covers_the_response_tokens_only(embedded_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    parsed = load_config(_write_config(tmp_path, TRAIN[:4]))
    data = load_sft(parsed.dataset, tokenizer)
    trainer = sft_training.build_trainer(parsed, "cpu", data, resolve_patient(parsed), tokenizer)
    for example, row in zip(trainer.train_dataset, data.train):
        learnt = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
        # the label and the end of the assistant's turn: nothing of the instruction
        assert tokenizer.decode(learnt).strip() == f"{row.response}<|im_end|>"


def test_train_sft_writes_a_patient_adapter_with_its_metrics(trained, embedded_model):
    manifest = inspect_adapter(str(trained), [trained.parent], "patient", embedded_model.name)
    assert manifest.meta["method"] == "sft" and manifest.rank == 8
    metrics = manifest.meta["metrics"]
    assert metrics["steps"] == STEPS and metrics["mean_token_accuracy"] > 0.8
    logs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    steps = [log for log in logs if "loss" in log]
    assert [log["step"] for log in steps] == list(range(1, STEPS + 1))
    assert sum(log["loss"] for log in steps[-5:]) < sum(log["loss"] for log in steps[:5]) / 3
    checkpoints = sorted(p.name for p in (trained / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-10", "checkpoint-20", "checkpoint-25"]
    assert not list(trained.glob("*.bin"))


async def _predict(engine, tokenizer, rows, adapter) -> list[str]:
    async def one(i, row):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}],
                                            add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        request = GenerateRequest(f"topic-{i}-{adapter}", tuple(ids), SamplingParams(max_tokens=4, temperature=0.0),
                                  Guidance(), adapter)
        tokens = []
        async for event in engine.generate(request):
            tokens += event.token_ids
        return tokenizer.decode(tokens, skip_special_tokens=True).strip().lower()

    return await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))


async def test_the_sft_adapter_beats_the_bare_patient_on_held_out_rows(trained, embedded_model):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    engine = TorchEngine(embedded_model, max_batch=40, max_queue=80)
    with one_torch_thread():
        await engine.start()
        await engine.load_adapter("topics", str(trained), "patient")
        try:
            bare = await _predict(engine, tokenizer, HELD_OUT, None)
            tuned = await _predict(engine, tokenizer, HELD_OUT, "topics")
        finally:
            await engine.shutdown(grace_seconds=1)

    def accuracy(predictions):
        return sum(p.split()[0].strip(".") == row["label"] if p else False
                   for p, row in zip(predictions, HELD_OUT)) / len(HELD_OUT)

    assert accuracy(tuned) >= 0.8 and accuracy(tuned) > accuracy(bare) + 0.2, (bare, tuned)


def test_ctrl_c_then_resume_ends_with_the_uninterrupted_weights(tmp_path, embedded_model, monkeypatch, capsys):
    rows = TRAIN[:32]
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = _write_config(tmp_path / "straight", rows, max_steps=4)
    with one_torch_thread():
        assert main(["train", "sft", "--config", str(straight)]) == 0
    config = _write_config(tmp_path / "stopped", rows, max_steps=4)
    build = sft_training.build_trainer

    def build_with_ctrl_c(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(CtrlCAtStep(2))
        return trainer

    monkeypatch.setattr(sft_training, "build_trainer", build_with_ctrl_c)
    with one_torch_thread():
        assert main(["train", "sft", "--config", str(config)]) == 130
    command = capsys.readouterr().err.split("resume with:\n", 1)[1].strip()
    assert shlex.split(command)[:3] == ["llmdoctor", "train", "sft"]
    monkeypatch.setattr(sft_training, "build_trainer", build)
    with one_torch_thread():
        assert main(shlex.split(command)[1:]) == 0
    resumed, uninterrupted = (load_file(str(p.parent / "out" / "adapter_model.safetensors")) for p in (config, straight))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)  # bitwise on CPU


def test_dry_run_reports_the_rows_and_writes_nothing(tmp_path, embedded_model, capsys):
    config = _write_config(tmp_path, TRAIN[:20] + [{"instruction": "", "response": "x", "label": "x"}])
    assert main(["train", "sft", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "method: sft" in out and "rows kept: 20" in out and "empty: 1" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, field", [
    ({"dataset": {"instruction_field": "question"}}, "dataset.instruction_field"),
    ({"dataset": {"label_field": "topic"}}, "dataset.label_field"),
    ({"alignment": {"method": "dpo"}}, "alignment.method"),
    ({"alignment": {"learning_rate": -1}}, "alignment.learning_rate"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path, embedded_model, capsys, change, field):
    path = _write_config(tmp_path, TRAIN[:4])
    config = yaml.safe_load(path.read_text())
    for section, values in change.items():
        config[section].update(values)
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "sft", "--config", str(path), "--dry-run"]) == 2
    assert field in capsys.readouterr().err


def test_the_shipped_sft_config_validates_and_its_data_loads(embedded_model):
    config = load_config(Path(sft_training.__file__).parent / "configs" / "sft.yaml")
    assert config.alignment.method == "sft" and config.dataset.path.resolve() == TOPICS.resolve()
    data = load_sft(config.dataset, seed=config.alignment.seed)
    assert data.report.kept == 300 and {row.label for row in data.rows} == {"sports", "science", "cooking", "travel"}
    assert DatasetConfig(path=TOPICS).label_field is None  # labels are opt-in
