"""Checks every engine makes of a request before accepting it, with the errors the API turns into 400s."""

from __future__ import annotations

from llmdoctor.server.engine.protocol import GenerateRequest
from llmdoctor.server.errors import ContextOverflowError, InvalidRequestError


def check_request(request: GenerateRequest, vocab_size: int, max_model_len: int) -> None:
    prompt = request.prompt_token_ids
    if not prompt:
        raise InvalidRequestError("the prompt must contain at least one token", "prompt")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise InvalidRequestError(f"prompt token ids must be in [0, {vocab_size})", "prompt")
    total = len(prompt) + request.sampling.max_tokens
    if total > max_model_len:
        raise ContextOverflowError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{total} tokens ({len(prompt)} in the prompt, {request.sampling.max_tokens} in the completion). "
            "Please reduce the prompt or max_tokens.",
            "max_tokens",
        )


def check_ratio_guidance(request: GenerateRequest, doctors_on_patient_base: bool) -> None:
    """A `ratio` doctor's term is beta * (log p_doctor - log p_base), its tilt away from its own base. The
    engines compute log p_base for free only where it is the request's patient distribution: the bare
    patient, with the doctors as LoRAs on the patient's base. Elsewhere the base's log-probs would need a
    row of their own, which the engines do not run yet: refused, rather than a silently different rule."""
    for i, doctor in enumerate(request.guidance.doctors):
        if doctor.mode != "ratio" or doctor.beta == 0.0:
            continue
        if request.adapter:
            raise InvalidRequestError(
                f"guidance.doctors[{i}].mode 'ratio' needs the bare patient as the model, not the patient adapter "
                f"'{request.adapter}' (the doctor's tilt is measured against the patient it was trained on); use "
                "mode 'product' with a patient adapter", f"guidance.doctors[{i}].mode")
        if not doctors_on_patient_base:
            raise InvalidRequestError(
                f"guidance.doctors[{i}].mode 'ratio' needs doctors on the patient's own base; this server runs its "
                "doctors on a separate --doctor-base; use mode 'product'", f"guidance.doctors[{i}].mode")
