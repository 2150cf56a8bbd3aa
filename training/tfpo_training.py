"""`llmdoctor train doctor --config doctor.yaml`: a TFPO doctor from stage 1's token rewards.

    result = train_doctor(load_doctor_config("doctor.yaml"), device="cpu")   # -> TrainResult

The doctor is a LoRA on the doctor base (the patient by default) plus a value head V_phi (a small
MLP on the doctor's last hidden state, last layer zero-initialised so log V = 0 at the start).
Each batch holds B preference rows = 2B sequences (prompt + chosen, prompt + rejected) with their
token rewards. The step (`TFPOTrainer.compute_loss`, losses in tfpo_losses.py):

1. doctor forward: step log-probs of every response token and log V at every state s_0..s_T;
2. base forward with the adapter off (no grad): the reference log-probs, for the `log_ratio` step
   term and for the metrics;
3. L_SubTB over all sub-trajectories of each response, plus value_weight * L_value at the state
   where chosen and rejected first differ.

The value head reads the hidden states detached: it learns to predict flows from the doctor's
features without bending them, so the LoRA is shaped by the policy term alone.

Logged like the preference trainers (progress bar, metrics.jsonl): `rewards/accuracies` is the
share of pairs whose doctor implicit reward, sum_t (log pi_doctor - log pi_base), is higher for
the chosen response; `rewards/margins` its mean difference; plus `tfpo/subtb` and `tfpo/value`.
Checkpoints hold the adapter and `value_head.safetensors`, so `--resume` restores both.

Output (`doctor.output_dir`): the peft LoRA folder + `value_head.safetensors` + llmdoctor.json
(kind doctor, method tfpo, the dimension, base model, metrics), which the server hot-loads as a
doctor (it reads the LoRA; the value head is for training and analysis).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ProgressCallback, TrainingArguments, set_seed

from llmdoctor.server.adapter_folders import write_adapter_metadata
from llmdoctor.training.callbacks import MetricsJsonlCallback, PreferenceProgressCallback
from llmdoctor.training.doctor_config import DoctorConfig
from llmdoctor.training.tfpo_data import DoctorData, RowCollator, load_reward_data
from llmdoctor.training.tfpo_losses import log_flows, subtb_loss, value_discrimination_loss
from llmdoctor.training.token_rewards import response_logprobs
from llmdoctor.training.trainer_runs import (
    METRICS_FILE,
    MetricsTrainer,
    TrainResult,
    common_arguments,
    load_policy,
    load_tokenizer,
    resolve_patient,
    save_lora,
    run_trainer,
)

VALUE_HEAD_FILE = "value_head.safetensors"
TFPO_KEYS = ("tfpo/subtb", "tfpo/value")  # logged beside loss and rewards/*, averaged into the final metrics


class DoctorWithValueHead(nn.Module):
    """The doctor policy (a peft model) and V_phi. forward -> (logits (N, L, V), log V (N, L))."""

    def __init__(self, policy, hidden: int):
        super().__init__()
        self.policy = policy
        size = policy.config.hidden_size
        self.value_head = nn.Sequential(nn.Linear(size, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.value_head[2].weight)  # log V = 0 everywhere at the start
        nn.init.zeros_(self.value_head[2].bias)
        self.config = policy.config  # the HF Trainer reads model.config

    def forward(self, input_ids, attention_mask):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.logits, self.value_head(out.hidden_states[-1].detach()).squeeze(-1)


# ---- the step ---------------------------------------------------------------------------------------


def state_positions(prompt_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Position of s_t's last token for t = 0..width-1: s_0 ends at prompt_len - 1. (N,) -> (N, width)."""
    return prompt_lengths.unsqueeze(-1) - 1 + torch.arange(width, device=prompt_lengths.device)


class TFPOTrainer(MetricsTrainer):
    """HF Trainer whose step is the TFPO loss (module docstring)."""

    def __init__(self, *args, config: DoctorConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.doctor = config.doctor

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        d = self.doctor
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        prompt_len, lengths, rewards = inputs["prompt_lengths"], inputs["response_lengths"], inputs["rewards"]
        width = rewards.shape[1]  # T: the longest response
        token_mask = (torch.arange(width, device=ids.device) < lengths.unsqueeze(-1)).float()  # (N, T)
        # 1) doctor: step log-probs (N, T) and log V at states s_0..s_T (N, T + 1)
        logits, log_values = model(input_ids=ids, attention_mask=mask)
        policy = response_logprobs(logits, ids, prompt_len, width) * token_mask
        positions = state_positions(prompt_len, width + 1).clamp(max=ids.shape[1] - 1)
        state_values = log_values.gather(1, positions)
        # 2) the base with the adapter off: reference log-probs (N, T)
        with torch.no_grad(), self.accelerator.unwrap_model(model).policy.disable_adapter():
            base_logits = model.policy(input_ids=ids, attention_mask=mask).logits
            reference = response_logprobs(base_logits, ids, prompt_len, width) * token_mask
        # 3) TFPO: SubTB over every sub-trajectory, value hinge at the divergence states
        steps = policy - reference if d.policy_term == "log_ratio" else policy
        scaled = d.reward_scale * rewards * token_mask
        subtb = subtb_loss(log_flows(scaled, state_values, lengths), steps, lengths, d.subtb_lambda)
        value = self._value_loss(state_values, inputs["divergence"], d.value_margin)
        loss = subtb + d.value_weight * value
        self._record(model.training, policy - reference, subtb, value)
        return (loss, {}) if return_outputs else loss

    @staticmethod
    def _value_loss(state_values: torch.Tensor, divergence: torch.Tensor, gamma: float) -> torch.Tensor:
        """Hinge on log V(s, y_w) - log V(s, y_l): row pair b = sequences (2b, 2b+1), state d + 1."""
        rows = torch.nonzero(divergence >= 0).squeeze(-1)  # pairs that diverge
        after = divergence[rows] + 1  # s_{d+1} = the shared prefix plus the differing token
        return value_discrimination_loss(state_values[2 * rows, after], state_values[2 * rows + 1, after], gamma)

    def _record(self, training: bool, log_ratio: torch.Tensor, subtb: torch.Tensor, value: torch.Tensor) -> None:
        implicit = log_ratio.detach().sum(-1)  # (N,) doctor implicit reward per response
        margin = implicit[0::2] - implicit[1::2]  # chosen - rejected, (B,)
        self.record(training, {
            "rewards/accuracies": (margin > 0).float().mean().item(),
            "rewards/margins": margin.mean().item(),
            "tfpo/subtb": subtb.item(),
            "tfpo/value": value.item(),
        })

    # checkpoints: the adapter and the value head, never the frozen base's weights

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        save_lora(model.policy, folder)  # float32: a resumed run continues from exact weights
        save_file(model.value_head.state_dict(), str(folder / VALUE_HEAD_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        folder = Path(resume_from_checkpoint)
        set_peft_model_state_dict(model.policy, load_file(str(folder / "adapter_model.safetensors")))
        model.value_head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))


# ---- the run ----------------------------------------------------------------------------------------


def build_trainer(config: DoctorConfig, device: str, data: DoctorData, base, tokenizer) -> TFPOTrainer:
    d = config.doctor
    args = TrainingArguments(**common_arguments(d, device, bool(data.validation)))
    args.remove_unused_columns = False  # the collator reads our columns
    args.label_names = []
    set_seed(d.seed)  # LoRA A and the value head are drawn from torch's RNG
    lora = LoraConfig(r=d.lora_r, lora_alpha=d.lora_alpha, lora_dropout=d.lora_dropout,
                      target_modules=list(d.target_modules), task_type="CAUSAL_LM")
    model = DoctorWithValueHead(get_peft_model(load_policy(base, device), lora), d.value_head_hidden)
    trainer = TFPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.validation) if data.validation else None,
        data_collator=RowCollator(tokenizer.pad_token_id),
        callbacks=[MetricsJsonlCallback(Path(d.output_dir) / METRICS_FILE)],
        config=config,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(PreferenceProgressCallback())
    return trainer


def train_doctor(config: DoctorConfig, device: str = "cpu", resume: Path | None = None) -> TrainResult:
    """Train, save the doctor folder, return its metrics. Raises ConfigError / DataError before any
    training, TrainingInterrupted on Ctrl+C after saving a checkpoint."""
    # 1) the doctor base, its tokenizer, and the token rewards (checked against that tokenizer)
    base = resolve_patient(config)
    tokenizer = load_tokenizer(config, base)
    data = load_reward_data(config.data, tokenizer, seed=config.doctor.seed)
    finish_defaults(config, data)
    # 2) trainer: LoRA + value head; reference = the base with the adapter off
    trainer = build_trainer(config, device, data, base, tokenizer)
    # 3) train, save the doctor folder
    return run_trainer(
        trainer, config.doctor, len(data.train), resume, doctor_saver(config, base.name), extra_keys=TFPO_KEYS
    )


def finish_defaults(config: DoctorConfig, data: DoctorData) -> None:
    """dimension from the rewards file; output_dir ./checkpoints/doctor-<dimension>-<timestamp>."""
    d = config.doctor
    if d.dimension is None:
        d.dimension = data.dimension
    if d.output_dir is None:
        d.output_dir = Path("checkpoints") / f"doctor-{d.dimension}-{datetime.now():%Y%m%d-%H%M%S}"


def doctor_saver(config: DoctorConfig, served_name: str):
    """run_trainer's `save`: the LoRA, the value head and llmdoctor.json (kind doctor, method tfpo)."""

    def save(trainer, metrics: dict[str, Any]) -> None:
        folder = Path(config.doctor.output_dir)
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.policy.peft_config["default"].base_model_name_or_path = served_name  # not the cache path
        save_lora(model.policy, folder, config.doctor.save_dtype)
        save_file(model.value_head.state_dict(), str(folder / VALUE_HEAD_FILE))
        metrics = {**metrics, "tfpo": _tfpo_settings(config)}
        write_adapter_metadata(
            folder, "doctor", served_name, "tfpo", dimension=config.doctor.dimension, metrics=metrics
        )

    return save


def _tfpo_settings(config: DoctorConfig) -> dict[str, Any]:
    d = config.doctor
    return json.loads(json.dumps({
        "policy_term": d.policy_term, "subtb_lambda": d.subtb_lambda, "value_margin": d.value_margin,
        "value_weight": d.value_weight, "reward_scale": d.reward_scale, "rewards_file": str(config.data.path),
    }))

