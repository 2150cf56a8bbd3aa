"""DPO patient adapters on TRL's DPOTrainer (TRL 1.16) and a peft LoRA.

    result = train_dpo(load_config("align.yaml"), device="cpu")   # -> TrainResult

Reference model: none is loaded, in either mode (dpo_trainer.py: `__init__` "Reference model").
- LoRA (`use_lora: true`): we pass the plain base model plus a `peft_config`; TRL wraps it with
  `get_peft_model` and computes the reference log-probs with the same model inside
  `use_adapter(model, None)`, i.e. with the adapter disabled.
- Full fine-tuning (`use_lora: false`): `precompute_ref_log_probs=True`; TRL runs the untouched
  model over the train and validation sets once, before the first step, and stores the log-probs
  as dataset columns (`_precompute_ref_logps`).
Either way the reference is the frozen base and no second copy sits in memory.

Layout of `alignment.output_dir`: the final peft adapter (`adapter_config.json`,
`adapter_model.safetensors`), or with `use_lora: false` a full transformers folder
(`config.json`, `model.safetensors`, tokenizer) that `llmdoctor serve --model DIR` serves; then
`llmdoctor.json`, `metrics.jsonl` (every log line), and `checkpoints/checkpoint-<step>/` (HF
Trainer checkpoints: weights, optimizer, scheduler, RNG, state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import ProgressCallback
from trl import DPOConfig, DPOTrainer

from llmdoctor.server.adapter_folders import write_adapter_metadata
from llmdoctor.server.model_store import ResolvedModel
from llmdoctor.training.callbacks import MetricsJsonlCallback, PreferenceProgressCallback
from llmdoctor.training.config import ConfigError, TrainingConfig
from llmdoctor.training.data import PreferenceData, load_preferences
from llmdoctor.training.trainer_runs import (
    METRICS_FILE,
    TrainResult,
    common_arguments,
    load_policy,
    load_tokenizer,
    resolve_patient,
    save_lora,
    run_trainer,
)

# ---- building blocks --------------------------------------------------------------------------------


def to_trl_example(record: dict[str, Any], chat: bool) -> dict[str, Any]:
    """prompt/chosen/rejected in TRL's layout.

    With a chat template (`chat`), everything becomes conversational: a string prompt is one user
    turn, a string response one assistant turn, and TRL applies the template (as the server's chat
    endpoint does). Without one, strings stay strings (TRL appends EOS to the responses).
    """
    prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    if not chat:
        if any(isinstance(value, list) for value in (prompt, chosen, rejected)):
            raise ConfigError(
                "model.base_model: the dataset holds chat messages but the tokenizer has no chat template; "
                "set model.base_model to a tokenizer that has one, or use plain-string rows",
                field="model.base_model",
            )
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {
        "prompt": as_messages(prompt, "user"),
        "chosen": as_messages(chosen, "assistant"),
        "rejected": as_messages(rejected, "assistant"),
    }


def as_messages(value: str | list[dict[str, str]], role: str) -> list[dict[str, str]]:
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def preference_dataset(rows: list, chat: bool) -> Dataset:
    """A `datasets.Dataset` with the columns DPOTrainer reads (prompt, chosen, rejected)."""
    return Dataset.from_list([to_trl_example(row.to_record(), chat) for row in rows])


def lora_config(config: TrainingConfig) -> LoraConfig | None:
    """The LoRA to train, or None for full fine-tuning (`use_lora: false`)."""
    a = config.alignment
    if not a.use_lora:
        return None
    return LoraConfig(
        r=a.lora_r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        target_modules=list(a.target_modules),
        task_type="CAUSAL_LM",
    )


def dpo_arguments(config: TrainingConfig, device: str, has_validation: bool) -> DPOConfig:
    """TRL arguments from our config (trainer_runs.common_arguments plus DPO's own)."""
    a = config.alignment
    return DPOConfig(
        **common_arguments(a, device, has_validation),  # bf16 set there: TRL's default (True) is not ours
        loss_type=[a.loss_type],
        beta=a.beta,
        max_length=config.dataset.max_length,
        # TRL defaults it on; a LoRA on a small model fits without it and runs ~20 % faster.
        gradient_checkpointing=False,
        # We turn off the base model's dropout ourselves (load_policy) so lora_dropout still applies.
        disable_dropout=False,
        # Full fine-tuning: reference log-probs from the untouched model, once, before step 1.
        precompute_ref_log_probs=not a.use_lora,
    )


def build_trainer(config: TrainingConfig, device: str, data: PreferenceData, model: ResolvedModel, tokenizer):
    """A DPOTrainer with our callbacks in place of the stock progress printer."""
    chat = tokenizer.chat_template is not None
    output_dir = Path(config.alignment.output_dir)
    trainer = DPOTrainer(
        model=load_policy(model, device),
        ref_model=None,  # reference = the frozen base, never a second copy (module docstring)
        args=dpo_arguments(config, device, bool(data.validation)),
        train_dataset=preference_dataset(data.train, chat),
        eval_dataset=preference_dataset(data.validation, chat) if data.validation else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=[MetricsJsonlCallback(output_dir / METRICS_FILE)],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(PreferenceProgressCallback())
    return trainer


# ---- the run ----------------------------------------------------------------------------------------


def train_dpo(config: TrainingConfig, device: str = "cpu", resume: Path | None = None) -> TrainResult:
    """Train, save the adapter folder, return its metrics.

    Raises ConfigError / DataError for bad config or data (before any training), and
    TrainingInterrupted on Ctrl+C after saving a checkpoint to resume from.
    """
    # 1) model, tokenizer and data (data errors surface here, before the model loads)
    model = resolve_patient(config)
    tokenizer = load_tokenizer(config, model)
    data = load_preferences(config.dataset, "dpo", tokenizer, seed=config.alignment.seed)
    # 2) trainer: LoRA (reference = adapter disabled) or full (reference precomputed)
    trainer = build_trainer(config, device, data, model, tokenizer)
    # 3) train, save the adapter folder
    return run_trainer(
        trainer, config.alignment, len(data.train), resume, patient_saver(config, model.name),
        full_model=not config.alignment.use_lora,
    )


def patient_saver(config: TrainingConfig, served_name: str):
    """run_trainer's `save` for a patient adapter (or full model) trained by `config`."""

    def save(trainer, metrics: dict) -> None:
        a = config.alignment
        save_adapter(trainer, Path(a.output_dir), served_name, metrics, a.method, a.save_dtype)

    return save


def save_adapter(trainer, folder: Path, served_name: str, metrics: dict, method: str = "dpo",
                 save_dtype: str = "float32") -> Path:
    """peft folder (safetensors) + llmdoctor.json naming the served model as base; after full
    fine-tuning, a full model folder (weights, config, tokenizer) + llmdoctor.json instead."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(model, PeftModel):
        # not trainer.save_model: it adds training_args.bin, a pickle, which no served folder holds
        model.save_pretrained(folder)  # model.safetensors + config.json
        trainer.processing_class.save_pretrained(folder)  # the tokenizer, so `serve --model` finds it
        write_adapter_metadata(folder, "patient", served_name, method, metrics=metrics, weights="full")
        return folder
    # peft records the cache folder it loaded from; the server matches on the served name.
    model.peft_config["default"].base_model_name_or_path = served_name
    save_lora(model, folder, save_dtype)
    write_adapter_metadata(folder, "patient", served_name, method, metrics=metrics)
    return folder


