"""DPO patient adapters on TRL's DPOTrainer (TRL 1.16) and a peft LoRA.

    result = train_dpo(load_config("align.yaml"), device="cpu")   # -> TrainResult

Reference model: none is loaded. We pass the plain base model plus a `peft_config`; TRL wraps it
with `get_peft_model` and, with `ref_model=None` and a peft model, keeps `self.ref_model = None`
and computes the reference log-probs with the same model inside `use_adapter(model, None)`, i.e.
with the adapter disabled (dpo_trainer.py: `__init__` "Reference model", `_compute_loss`). So the
reference is the frozen base and no second copy sits in memory.

Layout of `alignment.output_dir`: the final peft adapter (`adapter_config.json`,
`adapter_model.safetensors`) + `llmdoctor.json`, `metrics.jsonl` (every log line), and
`checkpoints/checkpoint-<step>/` (HF Trainer checkpoints: adapter, optimizer, scheduler, RNG, state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, ProgressCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import disable_dropout_in_model

from llmdoctor.server.adapter_folders import write_adapter_metadata
from llmdoctor.server.model_store import ResolvedModel, resolve_model
from llmdoctor.training.callbacks import MetricsJsonlCallback, PreferenceProgressCallback
from llmdoctor.training.config import ConfigError, TrainingConfig
from llmdoctor.training.data import PreferenceData, load_preferences

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    output_dir: Path  # the adapter folder
    metrics: dict[str, Any]  # as written to llmdoctor.json


class TrainingInterrupted(Exception):
    """Ctrl+C during training. `checkpoint` is the folder saved on the way out (None: nothing to save)."""

    def __init__(self, checkpoint: Path | None, step: int):
        super().__init__(f"interrupted at step {step}")
        self.checkpoint = checkpoint
        self.step = step


# ---- building blocks --------------------------------------------------------------------------------


def load_tokenizer(config: TrainingConfig, model: ResolvedModel):
    """The model folder's tokenizer, or `model.base_model`'s when given. Pad = EOS when unset."""
    tokenizer = AutoTokenizer.from_pretrained(config.model.base_model or model.folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_patient(config: TrainingConfig) -> ResolvedModel:
    """`model.path` as a loadable folder; ConfigError naming model.path when it is not."""
    from llmdoctor.server.model_store import ModelNotFoundError

    try:
        return resolve_model(config.model.path)
    except ModelNotFoundError as exc:
        raise ConfigError(f"model.path: {exc}", field="model.path") from None


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


def lora_config(config: TrainingConfig) -> LoraConfig:
    a = config.alignment
    return LoraConfig(
        r=a.lora_r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        target_modules=list(a.target_modules),
        task_type="CAUSAL_LM",
    )


def dpo_arguments(config: TrainingConfig, device: str, has_validation: bool) -> DPOConfig:
    """TRL/HF arguments from our config. Checkpoints go to `output_dir/checkpoints`."""
    a = config.alignment
    cuda = device == "cuda"
    evaluate = "no" if not has_validation else ("steps" if a.eval_steps else "epoch")
    return DPOConfig(
        output_dir=str(Path(a.output_dir) / CHECKPOINTS),
        loss_type=[a.loss_type],
        beta=a.beta,
        learning_rate=a.learning_rate,
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size,
        gradient_accumulation_steps=a.gradient_accumulation_steps,
        num_train_epochs=a.num_epochs,
        max_steps=a.max_steps or -1,
        warmup_steps=a.warmup_steps,
        weight_decay=a.weight_decay,
        save_strategy="steps",
        save_steps=a.save_steps,
        eval_strategy=evaluate,
        eval_steps=a.eval_steps,
        seed=a.seed,
        data_seed=a.seed,
        max_length=config.dataset.max_length,
        logging_steps=1,  # every step to metrics.jsonl; the bar shows the latest
        report_to="none",
        use_cpu=not cuda,
        # TRL defaults bf16=True; the CPU here has no native bf16 (FACTS.md): float32 there.
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=False,
        # TRL defaults it on; a LoRA on a small model fits without it and runs ~20 % faster.
        gradient_checkpointing=False,
        # We turn off the base model's dropout ourselves (load_policy) so lora_dropout still applies.
        disable_dropout=False,
        dataloader_num_workers=0,
    )


def load_policy(model: ResolvedModel, device: str):
    """The base model, float32, dropout off (the DPO log-ratio needs deterministic base passes)."""
    policy = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32)
    disable_dropout_in_model(policy)
    return policy.to("cuda" if device == "cuda" else "cpu")


def require_lora(config: TrainingConfig) -> None:
    """Both trainers take their reference from the base with the adapter off, and the server hot-loads
    LoRA adapters only: full fine-tuning is refused until it has a reference of its own."""
    if not config.alignment.use_lora:
        raise ConfigError(
            "alignment.use_lora: false (full fine-tuning) is not supported yet; use use_lora: true "
            "(the server hot-loads LoRA adapters, and the reference is the base with the adapter off)",
            field="alignment.use_lora",
        )


def build_trainer(config: TrainingConfig, device: str, data: PreferenceData, model: ResolvedModel, tokenizer):
    """A DPOTrainer with our callbacks in place of the stock progress printer."""
    require_lora(config)
    chat = tokenizer.chat_template is not None
    output_dir = Path(config.alignment.output_dir)
    trainer = DPOTrainer(
        model=load_policy(model, device),
        ref_model=None,  # reference = this model with the adapter disabled (module docstring)
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
    # 2) trainer: peft LoRA on the base, reference = adapter disabled
    trainer = build_trainer(config, device, data, model, tokenizer)
    # 3) train, save the adapter folder
    return run_trainer(trainer, config, model.name, len(data.train), resume)


def run_trainer(trainer, config: TrainingConfig, served_name: str, train_rows: int, resume: Path | None) -> TrainResult:
    """Train `trainer` (any HF Trainer logging `rewards/*`), then write the adapter folder; shared by
    DPO and GDPO. Ctrl+C saves a checkpoint first and raises TrainingInterrupted."""
    # 1) train; Ctrl+C saves a checkpoint first
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt:
        _close_progress(trainer)
        raise TrainingInterrupted(save_interrupt_checkpoint(trainer), trainer.state.global_step) from None
    # 2) the adapter folder the server loads
    metrics = final_metrics(trainer.state, steps_per_epoch(config, train_rows))
    save_adapter(trainer, Path(config.alignment.output_dir), served_name, metrics, config.alignment.method)
    return TrainResult(Path(config.alignment.output_dir), metrics)


def steps_per_epoch(config: TrainingConfig, train_rows: int) -> int:
    a = config.alignment
    return max(1, math.ceil(math.ceil(train_rows / a.batch_size) / a.gradient_accumulation_steps))


def save_interrupt_checkpoint(trainer) -> Path | None:
    """A full HF checkpoint (adapter, optimizer, scheduler, RNG, trainer state) at the last finished
    step, as `save_steps` would have written it; None when no step has finished."""
    step = trainer.state.global_step
    if step == 0:
        return None
    folder = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    if not (folder / "trainer_state.json").is_file():  # a save_steps checkpoint may already be there
        trainer._save_checkpoint(trainer.model, trial=None)
    return folder


def final_metrics(state, window: int) -> dict[str, Any]:
    """Loss, reward accuracy and margin averaged over the last `window` logged steps (one epoch's
    worth, so every training pair counts once at the end), plus the whole run's mean loss (from the
    log history, so a resumed run counts its steps before the resume too) and eval results."""
    train_logs = [log for log in state.log_history if "loss" in log and "rewards/accuracies" in log]
    last = train_logs[-window:]
    metrics: dict[str, Any] = {
        "loss": _mean(last, "loss"),
        "reward_accuracy": _mean(last, "rewards/accuracies"),
        "reward_margin": _mean(last, "rewards/margins"),
        "mean_train_loss": _mean(train_logs, "loss"),
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
    }
    evals = [log for log in state.log_history if "eval_loss" in log]
    if evals:
        last_eval = evals[-1:]
        metrics.update(
            eval_loss=_mean(last_eval, "eval_loss"),
            eval_reward_accuracy=_mean(last_eval, "eval_rewards/accuracies"),
            eval_reward_margin=_mean(last_eval, "eval_rewards/margins"),
        )
    return metrics


def _mean(logs: list[dict], key: str) -> float | None:
    values = [log[key] for log in logs if key in log]
    return round(sum(values) / len(values), 6) if values else None


def save_adapter(trainer, folder: Path, served_name: str, metrics: dict, method: str = "dpo") -> Path:
    """peft folder (safetensors) + llmdoctor.json naming the served model as base."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    # peft records the cache folder it loaded from; the server matches on the served name.
    model.peft_config["default"].base_model_name_or_path = served_name
    # save_embedding_layers=False: "auto" would ask the Hub whether the vocabulary changed.
    model.save_pretrained(folder, save_embedding_layers=False)
    write_adapter_metadata(folder, "patient", served_name, method, metrics=metrics)
    return folder


def _close_progress(trainer) -> None:
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None
