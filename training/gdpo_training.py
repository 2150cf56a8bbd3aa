"""GDPO patient adapters: a `transformers.Trainer` over ranked groups, on the DPO run machinery.

    result = train_gdpo(load_config("gdpo.yaml"), device="cpu")   # -> TrainResult

Everything but the step is `dpo_training`'s: the LoRA, the base model, arguments, callbacks
(progress bar, metrics.jsonl), checkpoints, Ctrl+C, resume, final metrics and the adapter folder.
What is new here:

- **Data.** Each row (a prompt and K responses, best first; K may differ between rows, 2 <= K <=
  group_delay_size) is tokenised once into `prompt_ids` and K `response_ids` (`tokenize_group`).
  `GroupCollator` flattens a batch of groups into sum(K) right-padded sequences with a completion
  mask, plus each group's K. No dummy responses: groups of different K share one forward pass and
  are only regrouped by K for the loss, so a padded slot can never enter a ranking.
- **Step.** `GroupPreferenceTrainer.compute_loss`: token-summed log-probs of every response with the
  adapter on (policy) and off (reference, `disable_adapter()` under no_grad: the frozen base, no
  second copy), then `losses.preference_loss` per K-subgroup; the batch loss is the mean over groups.
  Full fine-tuning (`use_lora: false`) has no adapter to switch off: the untouched model's
  log-probs are computed once before step 1 (`precompute_reference`, as TRL's
  `precompute_ref_log_probs`) and ride in the batches.
  Metrics go out under DPO's `rewards/*` keys, so progress bar and metrics.jsonl are unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import ProgressCallback, set_seed

from llmdoctor.server.model_store import ResolvedModel
from llmdoctor.training import dpo_training
from llmdoctor.training.callbacks import MetricsJsonlCallback, PreferenceProgressCallback
from llmdoctor.training.config import ConfigError, TrainingConfig
from llmdoctor.training.data import PreferenceData, load_preferences
from llmdoctor.training.losses import preference_loss
from llmdoctor.training.trainer_runs import (
    METRICS_FILE,
    MetricsTrainer,
    TrainResult,
    load_policy,
    load_tokenizer,
    resolve_patient,
    run_trainer,
)

# LossOutput.metrics field -> the key TRL's DPOTrainer logs it under (callbacks.py reads these).
METRIC_KEYS = {
    "reward_accuracy": "rewards/accuracies",
    "margin": "rewards/margins",
    "chosen_reward": "rewards/chosen",
    "rejected_reward": "rewards/rejected",
    "best_over_worst": "rewards/best_over_worst",
}


# ---- data -------------------------------------------------------------------------------------------


def tokenize_group(record: dict[str, Any], tokenizer, chat: bool) -> dict[str, Any]:
    """{"prompt_ids": [...], "response_ids": [[...] x K]} for one row, best response first.

    With a chat template the prompt is the templated conversation with a generation prompt, and a
    response is what the template adds after it for one assistant turn (its end-of-turn included);
    without one, plain text and EOS after each response (as TRL does for DPO). A response the sampler
    cut at its length limit (`record["truncated"]`) ends without the end-of-turn / EOS: it did not end.
    """
    prompt, responses = record["prompt"], record["responses"]
    cut = record.get("truncated") or [False] * len(responses)
    if not chat:
        if any(isinstance(value, list) for value in (prompt, *responses)):
            dpo_training.to_trl_example(record, chat=False)  # raises the DPO ConfigError
        prompt_text = prompt
        completions = [response + ("" if was_cut else tokenizer.eos_token) for response, was_cut in zip(responses, cut)]
    else:
        messages = dpo_training.as_messages(prompt, "user")
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        completions = []
        for response, was_cut in zip(responses, cut):
            full = tokenizer.apply_chat_template(
                messages + dpo_training.as_messages(response, "assistant"), tokenize=False
            )
            if not full.startswith(prompt_text):
                raise ConfigError(
                    "model.base_model: the tokenizer's chat template does not render a conversation as its "
                    "generation prompt plus the reply, so the reply tokens cannot be told apart; use a tokenizer "
                    "whose template does (set model.base_model)",
                    field="model.base_model",
                )
            completion = full[len(prompt_text):]
            text = response if isinstance(response, str) else ""
            if was_cut and text and text in completion:  # drop what the template adds after the reply
                completion = completion[: completion.rindex(text) + len(text)]
            completions.append(completion)
    # add_special_tokens=False: the template (or the EOS above) already placed every special token
    prompt_ids, *response_ids = tokenizer([prompt_text, *completions], add_special_tokens=False)["input_ids"]
    return {"prompt_ids": prompt_ids, "response_ids": response_ids}


def group_dataset(rows: list, tokenizer, chat: bool) -> Dataset:
    """Tokenised groups (columns prompt_ids, response_ids) in file order."""
    return Dataset.from_list([tokenize_group(row.to_record(), tokenizer, chat) for row in rows])


class GroupCollator:
    """Groups -> one right-padded batch of all their responses.

    Returns input_ids / attention_mask / completion_mask, each (N, T) with N = sum of the groups' K
    (group g's responses are rows offset_g .. offset_g + K_g - 1, best first), and group_sizes (B,).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, completions = [], []
        for feature in features:
            for response in feature["response_ids"]:
                sequences.append(list(feature["prompt_ids"]) + list(response))
                completions.append([0] * len(feature["prompt_ids"]) + [1] * len(response))
        width = max(map(len, sequences))
        batch = {
            "input_ids": right_pad(sequences, self.pad_token_id, width),
            "attention_mask": right_pad([[1] * len(s) for s in sequences], 0, width),
            "completion_mask": right_pad(completions, 0, width),
            "group_sizes": torch.tensor([len(f["response_ids"]) for f in features]),
        }
        if "reference_logps" in features[0]:  # (N,) precomputed for full fine-tuning
            batch["reference_logps"] = torch.tensor([v for f in features for v in f["reference_logps"]])
        return batch


def right_pad(rows: list[list[int]], fill: int, width: int) -> torch.Tensor:
    """(len(rows), width) long tensor, each row padded on the right with `fill`."""
    return torch.tensor([row + [fill] * (width - len(row)) for row in rows])


# ---- the step ---------------------------------------------------------------------------------------


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of completion-token log-probs per sequence, (N,), from logits (N, T, V) and ids/mask (N, T)."""
    targets, mask = input_ids[:, 1:], completion_mask[:, 1:].float()  # token t+1 is predicted at t
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1)  # (N,)


def regroup_by_k(values: torch.Tensor, group_sizes: list[int]) -> dict[int, torch.Tensor]:
    """Per-sequence values (N,) -> {K: (B_K, K)} with the groups of each size K, in batch order."""
    by_k: dict[int, list[torch.Tensor]] = defaultdict(list)
    for group in torch.split(values, group_sizes):
        by_k[len(group)].append(group)
    return {k: torch.stack(groups) for k, groups in by_k.items()}


class GroupPreferenceTrainer(MetricsTrainer):
    """HF Trainer whose step is the GDPO loss on ranked groups (module docstring)."""

    def __init__(self, *args, config: TrainingConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.alignment = config.alignment

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        a = self.alignment
        sizes = inputs["group_sizes"].tolist()
        forward = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        # 1) policy log-probs, adapter on (N,)
        policy = sequence_logps(model(**forward).logits, inputs["input_ids"], inputs["completion_mask"])
        # 2) reference log-probs of the frozen base (N,): precomputed (full), or with the adapter off
        if "reference_logps" in inputs:
            reference = inputs["reference_logps"].to(policy.dtype)
        else:
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                reference = sequence_logps(model(**forward).logits, inputs["input_ids"], inputs["completion_mask"])
        # 3) the GDPO loss per K, batch mean over groups; metrics weighted by each K's group count
        lengths = inputs["completion_mask"].sum(-1).float()  # (N,) response token counts, for ipo
        groups = zip(*(regroup_by_k(v, sizes).values() for v in (policy, reference, lengths)), strict=True)
        total, stats = 0.0, defaultdict(float)
        for policy_k, reference_k, lengths_k in groups:  # each (B_K, K)
            out = preference_loss(
                policy_k, reference_k, beta=a.beta, loss_type=a.loss_type,
                group_delay_weight=a.group_delay_weight, lengths=lengths_k,
            )
            total = total + out.per_example.sum()
            for field, key in METRIC_KEYS.items():
                stats[key] += getattr(out.metrics, field) * len(policy_k) / len(sizes)
        self.record(model.training, stats)
        loss = total / len(sizes)
        return (loss, {}) if return_outputs else loss


def precompute_reference(model, dataset: Dataset, collator: GroupCollator, batch_size: int) -> Dataset:
    """`dataset` plus a column reference_logps (K floats per row): each response's log-prob under
    `model` as it is now. For full fine-tuning, called before step 1 so that no reference copy of
    the model stays in memory during training."""
    device = next(model.parameters()).device
    values: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            logps = sequence_logps(logits, ids, batch["completion_mask"].to(device))
            values += [group.tolist() for group in torch.split(logps.cpu(), batch["group_sizes"].tolist())]
    return dataset.add_column("reference_logps", values)


# ---- the run ----------------------------------------------------------------------------------------


def build_trainer(config: TrainingConfig, device: str, data: PreferenceData, model: ResolvedModel, tokenizer):
    """A GroupPreferenceTrainer on a LoRA-wrapped base (or, with use_lora: false, the base itself and
    precomputed reference log-probs) with DPO's arguments and callbacks."""
    chat = tokenizer.chat_template is not None
    args = dpo_training.dpo_arguments(config, device, bool(data.validation))
    args.remove_unused_columns = False  # the collator reads prompt_ids / response_ids
    args.label_names = []
    set_seed(config.alignment.seed)  # LoRA A is drawn from torch's RNG: same seed, same start weights
    policy = load_policy(model, device)
    collator = GroupCollator(tokenizer.pad_token_id)
    splits = [group_dataset(rows, tokenizer, chat) if rows else None for rows in (data.train, data.validation)]
    if config.alignment.use_lora:
        policy = get_peft_model(policy, dpo_training.lora_config(config))
    else:
        splits = [precompute_reference(policy, split, collator, args.per_device_eval_batch_size) if split else None
                  for split in splits]
    trainer = GroupPreferenceTrainer(
        model=policy,
        args=args,
        train_dataset=splits[0],
        eval_dataset=splits[1],
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[MetricsJsonlCallback(Path(config.alignment.output_dir) / METRICS_FILE)],
        config=config,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(PreferenceProgressCallback())
    return trainer


def train_gdpo(config: TrainingConfig, device: str = "cpu", resume: Path | None = None) -> TrainResult:
    """Train, save the adapter folder (method gdpo), return its metrics. Errors as `train_dpo`."""
    # 1) model, tokenizer and ranked groups (data errors surface here, before the model loads)
    model = resolve_patient(config)
    tokenizer = load_tokenizer(config, model)
    data = load_preferences(
        config.dataset, "gdpo", tokenizer, group_size=config.alignment.group_delay_size, seed=config.alignment.seed
    )
    # 2) trainer: LoRA (reference = adapter disabled) or full (reference precomputed)
    trainer = build_trainer(config, device, data, model, tokenizer)
    # 3) train, save the adapter folder (DPO's machinery)
    return run_trainer(
        trainer, config.alignment, len(data.train), resume, dpo_training.patient_saver(config, model.name),
        not config.alignment.use_lora,
    )
