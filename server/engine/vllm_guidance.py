"""Per-request guidance as it travels through vLLM: `SamplingParams.extra_args["llmdoctor"]`.

The API side writes it (`guidance_extra_args`); the logits processor reads it back in the engine-core
process (`parse_guidance`). Plain data only (floats, strings, lists): vLLM serialises extra_args
with msgpack between processes. No vLLM import here, so the API side stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from llmdoctor.server.errors import InvalidRequestError

EXTRA_ARGS_KEY = "llmdoctor"


@dataclass(frozen=True)
class RowGuidance:
    """What the processor needs of one guided request: alpha and the active doctors with their betas."""

    alpha: float
    doctors: tuple[str, ...]
    betas: tuple[float, ...]


def guidance_extra_args(guidance: Guidance) -> dict | None:
    """extra_args for a request, or None when the rule is the patient's own distribution (no processor cost)."""
    if guidance.is_plain:
        return None
    return {EXTRA_ARGS_KEY: {"alpha": guidance.alpha, "doctors": [[d.name, d.beta] for d in guidance.active]}}


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
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.doctors must be a list of [name, beta] pairs")
    names, betas = [], []
    for i, entry in enumerate(doctors):
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
        beta = entry[1] if ok else None
        if not ok or isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
            raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.doctors[{i}] must be [name, finite beta], got {entry!r}")
        if beta != 0.0:
            names.append(entry[0])
            betas.append(float(beta))
    if len(set(names)) != len(names):
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.doctors names a doctor twice: {names}")
    try:  # the engine's ranges (protocol.py), checked again where vLLM hands the request to the processor
        Guidance(float(alpha), tuple(DoctorWeight(n, b) for n, b in zip(names, betas)))
    except InvalidRequestError as exc:
        raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}: {exc.message}") from exc
    if float(alpha) == 1.0 and not names:
        return None
    return RowGuidance(float(alpha), tuple(names), tuple(betas))
