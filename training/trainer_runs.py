"""What every llmdoctor trainer shares (DPO, GDPO, the TFPO doctor): loading the base, HF arguments
from a config section, and the run: train, Ctrl+C -> checkpoint, resume, final metrics, save.

A config section here is any object with the run keys of `AlignmentConfig` / `DoctorSection`
(output_dir, learning_rate, batch_size, gradient_accumulation_steps, num_epochs, max_steps,
warmup_steps, weight_decay, save_steps, save_total_limit, eval_steps, seed).

Layout of `output_dir`: the final folder's files (adapter or model + `llmdoctor.json`),
`metrics.jsonl` (every log line), and `checkpoints/checkpoint-<step>/` (HF Trainer checkpoints:
weights, optimizer, scheduler, RNG, state).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, ProgressCallback, Trainer
from trl.trainer.utils import disable_dropout_in_model

from llmdoctor.server.model_store import ResolvedModel, resolve_model
from llmdoctor.training.config import ConfigError

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TrainResult:
    output_dir: Path  # the adapter folder, or the full model folder (use_lora: false)
    metrics: dict[str, Any]  # as written to llmdoctor.json
    full_model: bool = False


class TrainingInterrupted(Exception):
    """Ctrl+C during training. `checkpoint` is the folder saved on the way out (None: nothing to save)."""

    def __init__(self, checkpoint: Path | None, step: int):
        super().__init__(f"interrupted at step {step}")
        self.checkpoint = checkpoint
        self.step = step


# ---- building blocks --------------------------------------------------------------------------------


def save_lora(peft_model, folder: Path, save_dtype: str = "float32") -> None:
    """peft's folder (adapter_config.json + safetensors); weights stored as `save_dtype`.

    Training runs in float32; "bfloat16" halves the folder (a shipped doctor, issue 19) and the
    servers cast the weights to their own dtype on load.
    """
    from safetensors.torch import load_file, save_file

    # save_embedding_layers=False: "auto" would ask the Hub whether the vocabulary changed.
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    if save_dtype != "float32":
        weights = Path(folder) / ADAPTER_WEIGHTS
        tensors = {k: v.to(SAVE_DTYPES[save_dtype]).contiguous() for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})


def load_tokenizer(config, model: ResolvedModel):
    """The model folder's tokenizer, or `config.model.base_model`'s when given. Pad = EOS when unset."""
    tokenizer = AutoTokenizer.from_pretrained(config.model.base_model or model.folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_patient(config) -> ResolvedModel:
    """`config.model.path` as a loadable folder; ConfigError naming model.path when it is not."""
    from llmdoctor.server.model_store import ModelNotFoundError

    try:
        return resolve_model(config.model.path)
    except ModelNotFoundError as exc:
        raise ConfigError(f"model.path: {exc}", field="model.path") from None


def load_policy(model: ResolvedModel, device: str):
    """The base model, float32, dropout off (log-ratios against the base need deterministic passes)."""
    policy = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32)
    disable_dropout_in_model(policy)
    return policy.to("cuda" if device == "cuda" else "cpu")


def common_arguments(section, device: str, has_validation: bool) -> dict[str, Any]:
    """HF TrainingArguments keywords from a config section. Checkpoints go to `output_dir/checkpoints`."""
    cuda = device == "cuda"
    return dict(
        output_dir=str(Path(section.output_dir) / CHECKPOINTS),
        learning_rate=section.learning_rate,
        per_device_train_batch_size=section.batch_size,
        per_device_eval_batch_size=section.batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        num_train_epochs=section.num_epochs,
        max_steps=section.max_steps or -1,
        warmup_steps=section.warmup_steps,
        weight_decay=section.weight_decay,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_total_limit=section.save_total_limit,
        eval_strategy="no" if not has_validation else ("steps" if section.eval_steps else "epoch"),
        eval_steps=section.eval_steps,
        seed=section.seed,
        data_seed=section.seed,
        logging_steps=1,  # every step to metrics.jsonl; the bar shows the latest
        report_to="none",
        use_cpu=not cuda,
        # the CPU here has no native bf16 (FACTS.md): float32 there
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=False,
        dataloader_num_workers=0,
    )


class MetricsTrainer(Trainer):
    """An HF Trainer whose `compute_loss` records its own metrics (`record`); their means since the
    last log join the next train or eval log (`eval_` prefixed), as TRL's DPOTrainer does, so the
    progress bar and metrics.jsonl read the same keys for every trainer. Eval is the loss only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our losses are means: let the Trainer divide by accumulation
        self._logged: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def record(self, training: bool, stats: dict[str, float]) -> None:
        stored = self._logged["train" if training else "eval"]
        for key, value in stats.items():
            stored[key].append(value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Eval: the loss only (our batches have no labels for the stock prediction step)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        if mode == "eval" or "loss" in logs:
            stored = self._logged[mode]
            logs.update({prefix + key: sum(values) / len(values) for key, values in stored.items() if values})
            stored.clear()
        super().log(logs, *args, **kwargs)


# ---- the run ----------------------------------------------------------------------------------------

Saver = Callable[[Any, dict[str, Any]], None]  # (trainer, final metrics) -> writes the output folder


def run_trainer(
    trainer,
    section,
    train_rows: int,
    resume: Path | None,
    save: Saver,
    full_model: bool = False,
    extra_keys: tuple[str, ...] = (),
) -> TrainResult:
    """Train `trainer` (any HF Trainer logging `loss` and `rewards/*`), then `save` the output folder
    with the final metrics (`extra_keys`: more logged keys to average into them). Ctrl+C saves a
    checkpoint first and raises TrainingInterrupted."""
    # 1) train; Ctrl+C saves a checkpoint first
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt:
        _close_progress(trainer)
        raise TrainingInterrupted(save_interrupt_checkpoint(trainer), trainer.state.global_step) from None
    # 2) the folder the server loads
    metrics = final_metrics(trainer.state, steps_per_epoch(section, train_rows), extra_keys)
    save(trainer, metrics)
    return TrainResult(Path(section.output_dir), metrics, full_model=full_model)


def steps_per_epoch(section, train_rows: int) -> int:
    return max(1, math.ceil(math.ceil(train_rows / section.batch_size) / section.gradient_accumulation_steps))


def save_interrupt_checkpoint(trainer) -> Path | None:
    """A full HF checkpoint (weights, optimizer, scheduler, RNG, trainer state) at the last finished
    step, as `save_steps` would have written it; None when no step has finished."""
    step = trainer.state.global_step
    if step == 0:
        return None
    folder = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    if not (folder / "trainer_state.json").is_file():  # a save_steps checkpoint may already be there
        trainer._save_checkpoint(trainer.model, trial=None)
    return folder


def final_metrics(state, window: int, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Loss, reward accuracy and margin averaged over the last `window` logged steps (one epoch's
    worth, so every training pair counts once at the end), plus the whole run's mean loss (from the
    log history, so a resumed run counts its steps before the resume too) and eval results.
    `extra_keys`: more logged keys to average the same way (a trainer's own loss parts)."""
    train_logs = [log for log in state.log_history if "loss" in log]  # a step's log (eval logs carry eval_loss)
    last = train_logs[-window:]
    metrics: dict[str, Any] = {
        "loss": _mean(last, "loss"),
        "reward_accuracy": _mean(last, "rewards/accuracies"),
        "reward_margin": _mean(last, "rewards/margins"),
        **{key.replace("/", "_"): _mean(last, key) for key in extra_keys},
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
        for key in extra_keys:  # the trainer's own keys, where its eval logs them too
            value = _mean(last_eval, f"eval_{key}")
            if value is not None:
                metrics[f"eval_{key.replace('/', '_')}"] = value
    return metrics


def _mean(logs: list[dict], key: str) -> float | None:
    values = [log[key] for log in logs if key in log]
    return round(sum(values) / len(values), 6) if values else None


def _close_progress(trainer) -> None:
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None
