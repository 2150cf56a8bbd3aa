"""What an evaluation measures per setting, besides the task scores: the KL from the patient, per
generated token, computed exactly by teacher forcing, and distinct-n.

KL(p_decode || p_patient) at each generated position t, summed over the whole vocabulary:

    KL_t = sum_y p_decode(y | s_t) * (log p_decode(y | s_t) - log p_patient(y | s_t))

with p_decode the distribution the setting's token was drawn from by the rule (DESIGN.md, "The
decode rule"; `combine_logprobs`), before temperature and top-p, and p_patient the bare patient's.
For a patient adapter, p_decode is the patient with the adapter. The bare patient's KL is exactly 0.

Distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
Models"): unique n-grams / total n-grams over all responses of a setting, on whitespace words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from llmdoctor.server.engine.decode_rule import combine_logprobs, logprobs_from_logits

BASE = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique / total whitespace-word n-grams over `texts`; 0.0 when there are none."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def kl_divergence(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, from log-probs (..., V) -> (...). Exactly 0 where p == q."""
    return (p_logprobs.exp() * (p_logprobs - q_logprobs)).sum(dim=-1)


def rule_kl(
    patient_logprobs: torch.Tensor,  # (T, V)
    doctor_logprobs: torch.Tensor,  # (D, T, V)
    alpha: float,
    betas: Sequence[float],  # (D,)
) -> torch.Tensor:
    """KL(p_decode || p_patient) per position, (T,), with p_decode the decode rule's distribution.
    With no doctors and alpha 1 it returns exact zeros (the rule is then the patient itself)."""
    if not len(betas) and alpha == 1.0:
        return patient_logprobs.new_zeros(patient_logprobs.shape[0])
    weights = torch.tensor(list(betas), dtype=patient_logprobs.dtype, device=patient_logprobs.device)
    per_position = doctor_logprobs.transpose(0, 1)  # (T, D, V)
    rule = combine_logprobs(patient_logprobs, per_position, alpha, weights.expand(per_position.shape[0], -1))
    return kl_divergence(rule, patient_logprobs)


class TeacherForcer:
    """The patient with every doctor and patient adapter loaded (peft), scoring given token ids:
    one batched forward per model over prompt + response gives the log-probs of each position.
    Only adapters on the patient's own base are supported (doctor rows ride on the patient's base)."""

    def __init__(self, model_folder: Path, adapters: dict[str, Path], device: str = "cpu"):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).to(device).eval()
        for i, (name, folder) in enumerate(adapters.items()):
            if i == 0:
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=False)
            else:
                model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        self.model, self.has_adapters, self.device = model.eval(), bool(adapters), torch.device(device)

    @torch.inference_mode()
    def response_logprobs(self, prompt: Sequence[int], response: Sequence[int], models: Sequence[str]) -> torch.Tensor:
        """Log-probs of every position that predicted a response token, per model: (M, T, V), float32.
        `models` names adapters, or BASE for the bare patient."""
        ids = torch.tensor([list(prompt) + list(response)], device=self.device).expand(len(models), -1)
        kwargs = {"input_ids": ids, "logits_to_keep": len(response) + 1}  # (M, T+1, V): the last predicts nothing
        if self.has_adapters:
            kwargs["adapter_names"] = list(models)
        logits = self.model(**kwargs).logits[:, :-1, :]
        return logprobs_from_logits(logits)

    def kl_per_token(
        self, prompt: Sequence[int], response: Sequence[int], alpha: float, doctors: Sequence[tuple[str, float]],
        adapter: str | None = None,
    ) -> torch.Tensor:
        """KL(p_decode || p_patient) at each response position, (T,). With `adapter` (a patient adapter,
        used without doctors) p_decode is the patient with that adapter; else the rule over `doctors`."""
        if adapter is None and not doctors and alpha == 1.0:
            return torch.zeros(len(response))  # the rule is the patient itself: no forward needed
        if adapter is not None:
            assert not doctors, "a patient adapter is evaluated alone"
            with_adapter, patient = self.response_logprobs(prompt, response, [adapter, BASE])
            return kl_divergence(with_adapter, patient)
        logprobs = self.response_logprobs(prompt, response, [BASE] + [name for name, _ in doctors])  # (1+D, T, V)
        return rule_kl(logprobs[0], logprobs[1:], alpha, [beta for _, beta in doctors])
