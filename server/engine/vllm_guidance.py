"""Per-request guidance as it travels through vLLM: `SamplingParams.extra_args["llmdoctor"]`.

The API side writes it (`guidance_extra_args`); the logits processor reads it back in the engine-core
process (`parse_guidance`). Plain data only (floats, strings, lists): vLLM serialises extra_args
with msgpack between processes. No vLLM import here, so the API side stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmdoctor.server.engine.protocol import GUIDANCE_MODES, DoctorWeight, Guidance
from llmdoctor.server.errors import InvalidRequestError

EXTRA_ARGS_KEY = "llmdoctor"


@dataclass(frozen=True)
class RowGuidance:
    """What the processor needs of one guided request: the patient's weight as the rule computes it
    (`Guidance.rule_alpha`: alpha less the betas of `ratio` doctors) and the active doctors' betas."""

    alpha: float
    doctors: tuple[str, ...]
    betas: tuple[float, ...]
    # min_tokens and logit_bias act after the rule (logit_adjust.py); vLLM's own would act before the
    # processor, on the patient's logits, so a guided request's travel here and the processor applies them
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    # the request's id, under which the processor keeps what the rule did for the API to take (vllm_traces.py)
    trace: str | None = None
    explain: bool = False
    max_kl: float | None = None


def guidance_extra_args(guidance: Guidance, min_tokens: int = 0, logit_bias=(), trace: str | None = None
                        ) -> dict | None:
    """extra_args for a request, or None when the rule is the patient's own distribution (no processor cost)."""
    if guidance.is_plain:
        return None
    doctors = [[d.name, d.beta, d.mode] for d in guidance.active]
    value = {"alpha": guidance.alpha, "doctors": doctors}
    if min_tokens:
        value["min_tokens"] = min_tokens
    if logit_bias:
        value["logit_bias"] = [[token, bias] for token, bias in logit_bias]
    if trace is not None:
        value["trace"] = trace
    if guidance.explain:
        value["explain"] = True
    if guidance.max_kl is not None:
        value["max_kl"] = guidance.max_kl
    return {EXTRA_ARGS_KEY: value}


def parse_guidance(extra_args: dict | None) -> RowGuidance | None:
    """extra_args -> RowGuidance, None for an unguided request. Raises ValueError naming the field."""
    value = (extra_args or {}).get(EXTRA_ARGS_KEY)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY} must be an object with alpha and doctors")
    alpha = value.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.alpha must be a finite number, got {alpha!r}")
    doctors = value.get("doctors", [])
    if not isinstance(doctors, (list, tuple)):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.doctors must be a list of [name, beta, mode] entries")
    weights = []
    for i, entry in enumerate(doctors):
        ok = isinstance(entry, (list, tuple)) and len(entry) in (2, 3) and isinstance(entry[0], str)
        beta = entry[1] if ok else None
        mode = entry[2] if ok and len(entry) == 3 else "product"
        if (not ok or isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta)
                or mode not in GUIDANCE_MODES):
            raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.doctors[{i}] must be [name, finite beta, mode] with mode "
                             f"one of {', '.join(GUIDANCE_MODES)}, got {entry!r}")
        if beta != 0.0:
            weights.append(DoctorWeight(entry[0], float(beta), mode))
    names = [w.name for w in weights]
    if len(set(names)) != len(names):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.doctors names a doctor twice: {names}")
    explain, max_kl, trace = value.get("explain", False), value.get("max_kl"), value.get("trace")
    if not isinstance(explain, bool):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.explain must be true or false, got {explain!r}")
    if max_kl is not None and (isinstance(max_kl, bool) or not isinstance(max_kl, (int, float))):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.max_kl must be a number, got {max_kl!r}")
    if trace is not None and not isinstance(trace, str):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.trace must be a request id, got {trace!r}")
    try:  # the engine's ranges (protocol.py), checked again where vLLM hands the request to the processor
        guidance = Guidance(float(alpha), tuple(weights), explain, None if max_kl is None else float(max_kl))
    except InvalidRequestError as exc:
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}: {exc.message}") from exc
    if guidance.is_plain:
        return None
    min_tokens = value.get("min_tokens", 0)
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 0:
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.min_tokens must be a whole number >= 0, got {min_tokens!r}")
    bias = value.get("logit_bias", [])
    if not isinstance(bias, (list, tuple)) or not all(
            isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], int) and not isinstance(e[0], bool)
            and e[0] >= 0 and isinstance(e[1], (int, float)) and math.isfinite(e[1]) for e in bias):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.logit_bias must be a list of [token id, finite bias] entries")
    return RowGuidance(guidance.rule_alpha, tuple(names), tuple(w.beta for w in weights), min_tokens,
                       tuple((int(t), float(b)) for t, b in bias), trace, explain, guidance.max_kl)
