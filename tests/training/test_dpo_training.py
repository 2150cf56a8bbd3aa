"""`llmdoctor train dpo` on the embedded model, CPU: a few real DPO steps on 8 cheerful-vs-gloomy pairs.

One module-scoped run (~30 s) is shared by the tests that check its results; the error tests stop
before any model loads.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shlex
import subprocess
import sys
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
from llmdoctor.training import dpo_training
from tests.adapters import SYSTEM, CtrlCAtStep, one_torch_thread
from tests.live_server import start_server

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
GLOOMY = "It is awful. Sad, grey and hopeless."
STEPS = 6


def _write_pairs(path: Path) -> Path:
    # A short system turn: the template's default one would double every sequence (and step time).
    rows = [
        {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], "chosen": CHEERFUL,
         "rejected": GLOOMY}
        for q in QUESTIONS
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _write_config(folder: Path, **alignment) -> Path:
    config = {
        "model": {"path": "embedded"},
        "dataset": {"path": str(_write_pairs(folder / "pairs.jsonl"))},
        "alignment": {
            "method": "dpo",
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
    path = folder / "align.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedded_model) -> Path:
    """The output_dir of one `llmdoctor train dpo` run of STEPS steps."""
    config = _write_config(tmp_path_factory.mktemp("dpo"))
    with one_torch_thread():
        assert main(["train", "dpo", "--config", str(config)]) == 0
    return config.parent / "out"


def test_train_dpo_dry_run_prints_config_and_report_and_writes_nothing(tmp_path, embedded_model, capsys):
    config = _write_config(tmp_path)
    assert main(["train", "dpo", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "method: dpo" in out and "beta: 0.1" in out  # the resolved config, defaults included
    assert "rows kept: 8" in out and "train / validation: 8 / 0" in out
    assert not (tmp_path / "out").exists()


def test_train_dpo_raises_reward_accuracy_and_lowers_loss(trained):
    metrics = json.loads((trained / "llmdoctor.json").read_text())["metrics"]
    assert metrics["steps"] == STEPS
    assert metrics["loss"] < math.log(2) - 0.1  # ln 2 = an untrained sigmoid DPO loss
    assert metrics["reward_accuracy"] > 0.5 and metrics["reward_margin"] > 0


def test_train_dpo_metrics_jsonl_has_every_step(trained):
    logs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    steps = [log for log in logs if "rewards/accuracies" in log]
    assert [log["step"] for log in steps] == list(range(1, STEPS + 1))
    # step 1 runs with the adapter's B = 0, so the policy equals the reference: loss ln 2, margin 0
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_train_dpo_writes_checkpoints_every_save_steps(trained):
    checkpoints = sorted(p.name for p in (trained / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    assert (trained / "checkpoints" / "checkpoint-3" / "optimizer.pt").is_file()


def test_train_dpo_output_passes_inspect_adapter(trained, embedded_model):
    manifest = inspect_adapter(str(trained), [trained.parent], "patient", embedded_model.name)
    assert manifest.meta["method"] == "dpo" and manifest.rank == 8
    assert not list(trained.glob("*.bin"))  # safetensors only at the top level


async def test_train_dpo_adapter_changes_engine_greedy_output(trained, embedded_model):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    engine = TorchEngine(embedded_model, max_batch=4, max_queue=8)
    with one_torch_thread():
        await engine.start()
        await engine.load_adapter("dpo", str(trained), "patient")
        try:
            bare = [await _greedy(engine, tokenizer, q, None) for q in QUESTIONS[:2]]
            aligned = [await _greedy(engine, tokenizer, q, "dpo") for q in QUESTIONS[:2]]
        finally:
            await engine.shutdown(grace_seconds=1)
    assert bare != aligned


async def _greedy(engine, tokenizer, question: str, adapter: str | None) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    request = GenerateRequest(f"dpo-{question}-{adapter}", tuple(ids), SamplingParams(max_tokens=12, temperature=0.0),
                              Guidance(), adapter)
    tokens = []
    async for event in engine.generate(request):
        tokens += event.token_ids
    return tokens


async def test_train_dpo_adapter_hot_loads_into_a_live_server_and_changes_its_greedy_output(
    trained, embedded_model, tmp_path
):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    server = start_server(["--adapter-root", str(trained.parent)], tmp_path / "server.log")
    try:
        with server.client() as http:
            loaded = http.post("/v1/adapters", json={"name": "dpo", "path": str(trained), "kind": "patient"})
            assert loaded.status_code == 200, loaded.text

            def greedy(model: str) -> str:
                body = {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0}
                response = http.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["text"]

            bare, aligned = greedy(embedded_model.name), greedy("dpo")
    finally:
        server.stop()
    assert aligned != bare
    # the served adapter decodes exactly as the engine does with it loaded in-process
    engine = TorchEngine(embedded_model, max_batch=4, max_queue=8)
    with one_torch_thread():
        await engine.start()
        await engine.load_adapter("dpo", str(trained), "patient")
        try:
            expected = await _greedy(engine, tokenizer, QUESTIONS[0], "dpo")
        finally:
            await engine.shutdown(grace_seconds=1)
    assert aligned == tokenizer.decode(expected, skip_special_tokens=True)


def test_train_dpo_ctrl_c_then_resume_ends_with_the_uninterrupted_weights(trained, tmp_path, monkeypatch, capsys):
    config = _write_config(tmp_path)  # the same run as `trained`, interrupted after step 2
    build = dpo_training.build_trainer

    def build_with_ctrl_c(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(CtrlCAtStep(2))
        return trainer

    monkeypatch.setattr(dpo_training, "build_trainer", build_with_ctrl_c)
    with one_torch_thread():
        assert main(["train", "dpo", "--config", str(config)]) == 130
    err = capsys.readouterr().err
    checkpoint = tmp_path / "out" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "trainer_state.json").is_file()
    command = err.split("resume with:\n", 1)[1].strip()
    assert shlex.split(command)[:3] == ["llmdoctor", "train", "dpo"] and str(checkpoint) in command

    monkeypatch.setattr(dpo_training, "build_trainer", build)
    with one_torch_thread():
        assert main(shlex.split(command)[1:]) == 0  # the printed command, as the user would paste it
    resumed, uninterrupted = (load_file(str(d / "adapter_model.safetensors")) for d in (tmp_path / "out", trained))
    assert resumed.keys() == uninterrupted.keys()
    # bitwise on CPU (seen here): optimizer, scheduler, RNG and data order all continue where they stopped
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)
    metrics = [json.loads((d / "llmdoctor.json").read_text())["metrics"] for d in (tmp_path / "out", trained)]
    assert metrics[0] == metrics[1]  # the steps before the interruption count in the final metrics too


def test_train_dpo_bad_config_value_exits_2_naming_the_field(tmp_path, capsys):
    config = _write_config(tmp_path, beta=-1)
    assert main(["train", "dpo", "--config", str(config)]) == 2
    assert "alignment.beta" in capsys.readouterr().err


def test_train_dpo_method_mismatch_exits_2_naming_the_field(tmp_path, capsys):
    config = _write_config(tmp_path, method="gdpo")
    assert main(["train", "dpo", "--config", str(config)]) == 2
    assert "alignment.method" in capsys.readouterr().err


def test_train_dpo_missing_data_field_exits_2_listing_fields(tmp_path, embedded_model, capsys):
    config = _write_config(tmp_path)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "hi", "good": "a", "bad": "b"}) + "\n")
    assert main(["train", "dpo", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "chosen" in err and "good" in err
    assert not (tmp_path / "out").exists()


def test_train_dpo_resume_from_missing_checkpoint_exits_2(tmp_path, capsys):
    config = _write_config(tmp_path)
    assert main(["train", "dpo", "--config", str(config), "--resume", str(tmp_path / "nope")]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback when CUDA is missing")
def test_train_dpo_device_cuda_without_cuda_warns_and_uses_cpu(tmp_path, embedded_model, capsys):
    config = _write_config(tmp_path)
    assert main(["train", "dpo", "--config", str(config), "--dry-run", "--device", "cuda"]) == 0
    captured = capsys.readouterr()
    assert "CUDA is not available" in captured.err and "device: cpu" in captured.out


@pytest.mark.skipif(torch.cuda.is_available(), reason="caps CPU memory with RLIMIT_AS")
def test_train_dpo_out_of_memory_exits_3_with_advice_not_a_traceback(tmp_path, embedded_model):
    # A real out-of-memory: 16 pairs of ~900-token rows per batch need ~11 GB of logits alone; the
    # process may map 8 GB, enough to load the model and the data.
    long_chosen, long_rejected = " ".join(["wonderful happy bright"] * 300), " ".join(["awful sad grey"] * 300)
    rows = [{"prompt": f"Tell me story {i}.", "chosen": long_chosen, "rejected": long_rejected} for i in range(16)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {"model": {"path": "embedded"}, "dataset": {"path": "pairs.jsonl", "max_length": 2048},
              "alignment": {"method": "dpo", "output_dir": str(tmp_path / "out"), "batch_size": 16, "max_steps": 1}}
    (tmp_path / "align.yaml").write_text(yaml.safe_dump(config))

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    done = subprocess.run(
        [sys.executable, "-m", "llmdoctor.server.cli", "train", "dpo", "--config", str(tmp_path / "align.yaml")],
        capture_output=True, text=True, preexec_fn=cap_memory, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "out of memory on cpu" in done.stderr and "Traceback" not in done.stderr
    assert "alignment.batch_size: 16 -> 8" in done.stderr and "gradient_accumulation_steps: 1 -> 2" in done.stderr
