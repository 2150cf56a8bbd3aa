"""Supervised fine-tuning (SFT) of a patient adapter on TRL's SFTTrainer (TRL 1.16) and a peft LoRA (or every
weight with `use_lora: false`).

    result = train_sft(load_config("sft.yaml"), device="cpu")   # -> TrainResult

Rows go to TRL in its prompt-completion layout (sft_data.SftRow.to_trl), so the loss covers the response
tokens only (`completion_only_loss`); with a chat template, prompt and response are the user and assistant
turns, as the server's chat endpoint will send them. The output folder is the one DPO writes
(dpo_training.save_adapter): a peft adapter the server hot-loads as a patient (`llmdoctor.json` method
`sft`), or a full model folder; checkpoints, Ctrl+C and --resume are trainer_runs.py's, shared with DPO.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from transformers import ProgressCallback
from trl import SFTConfig, SFTTrainer

from llmdoctor.server.model_store import ResolvedModel
from llmdoctor.training.callbacks import MetricsJsonlCallback, PreferenceProgressCallback
from llmdoctor.training.config import TrainingConfig
from llmdoctor.training.dpo_training import lora_config, patient_saver
from llmdoctor.training.sft_data import SftData, SftRow, load_sft
from llmdoctor.training.trainer_runs import (
    METRICS_FILE,
    TrainResult,
    common_arguments,
    load_policy,
    load_tokenizer,
    resolve_patient,
    run_trainer,
)


def sft_dataset(rows: list[SftRow], chat: bool) -> Dataset:
    return Dataset.from_list([row.to_trl(chat) for row in rows])


def sft_arguments(config: TrainingConfig, device: str, has_validation: bool) -> SFTConfig:
    return SFTConfig(
        **common_arguments(config.alignment, device, has_validation),
        max_length=config.dataset.max_length,  # longer rows were skipped and reported by the loader
        completion_only_loss=True,  # the response's tokens only: the prompt is given, not learnt
        packing=False,  # one example per row: exact, and resumable bit for bit
        gradient_checkpointing=False,  # as for DPO: a LoRA on a small model fits without it, and runs faster
        dataset_num_proc=None,
    )


def build_trainer(config: TrainingConfig, device: str, data: SftData, model: ResolvedModel, tokenizer) -> SFTTrainer:
    chat = tokenizer.chat_template is not None
    trainer = SFTTrainer(
        model=load_policy(model, device),
        args=sft_arguments(config, device, bool(data.validation)),
        train_dataset=sft_dataset(data.train, chat),
        eval_dataset=sft_dataset(data.validation, chat) if data.validation else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=[MetricsJsonlCallback(Path(config.alignment.output_dir) / METRICS_FILE)],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(PreferenceProgressCallback())
    return trainer


def train_sft(config: TrainingConfig, device: str = "cpu", resume: Path | None = None) -> TrainResult:
    """Train, save the adapter folder, return its metrics. Raises ConfigError / DataError before any training,
    TrainingInterrupted on Ctrl+C after saving a checkpoint to resume from."""
    model = resolve_patient(config)
    tokenizer = load_tokenizer(config, model)
    data = load_sft(config.dataset, tokenizer, seed=config.alignment.seed)
    trainer = build_trainer(config, device, data, model, tokenizer)
    return run_trainer(trainer, config.alignment, len(data.train), resume, patient_saver(config, model.name),
                       full_model=not config.alignment.use_lora, extra_keys=("mean_token_accuracy",))
