"""Evaluation config: one YAML file (`llmdoctor eval --config eval.yaml`), validated by pydantic.

    model: {path: embedded}
    prompts: {path: prompts.jsonl, skip: 256, limit: 48}   # a held-out slice of the prompt file
    doctors: {positivity: adapters/positivity, conciseness: adapters/conciseness}
    patient_adapters: {dpo: adapters/dpo}                   # optional
    betas: [0.25, 0.5, 1.0, 2.0]                            # each doctor alone at each beta
    grid_betas: [0.0, 0.5, 1.0]                             # first two doctors at every pair
    alpha: 1.0
    scorers: [sentiment, length]
    generation: {max_tokens: 48, temperature: 1.0, top_p: 1.0, samples_per_prompt: 1, seed: 0, max_batch: 16}
    output_dir: eval-out
    device: cpu

Same machinery and error style as training/config.py: unknown keys list the known ones, every error
names the dotted field. Input paths (model, prompts, doctors, patient adapters) given relative resolve
against the config file's folder; `output_dir` against the working directory (as in training).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmdoctor.training.config import ConfigError, ModelConfig, _Section, _under, read_config
from llmdoctor.training.scorers import SCORERS
from llmdoctor.training.synth import PROMPTS_FILE

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # setting names embed these: no '@', '+', ':' or spaces


class PromptsConfig(_Section):
    """Which prompts: rows `skip` .. `skip + limit` of a JSONL file of {"prompt": ...} rows (unique,
    in file order), so a held-out tail of the training prompts can be chosen."""

    path: Path = PROMPTS_FILE
    skip: int = Field(0, ge=0)
    limit: int | None = Field(48, ge=1)  # None = all after `skip`


class GenerationConfig(_Section):
    """Sampling, the same for every setting. Each (prompt, sample) has its own seed, derived from
    `seed`, so every setting sees the same random draws and the settings are comparable."""

    max_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    samples_per_prompt: int = Field(1, ge=1)
    seed: int = 0
    max_batch: int = Field(16, ge=1)  # engine rows decoded together


class EvalConfig(_Section):
    """The whole YAML file."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    doctors: dict[str, Path] = Field(default_factory=dict)  # name -> doctor adapter folder (kind doctor)
    patient_adapters: dict[str, Path] = Field(default_factory=dict)  # name -> patient adapter (DPO, GDPO)
    betas: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])
    grid_betas: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0])
    # also the patient alone at alpha + beta for each swept beta: the sharpening a doctor gets for free
    sharpening_controls: bool = False
    alpha: float = 1.0
    # how each doctor enters the rule (server/engine/protocol.py GuidanceMode): ratio applies its tilt
    # from the patient alone; product (the rule as DESIGN.md writes it) also sharpens by alpha + beta
    doctor_mode: Literal["product", "ratio"] = "ratio"
    scorers: list[str] = Field(default_factory=lambda: ["sentiment", "length"], min_length=1)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    output_dir: Path | None = None  # None = ./eval/<model>-<timestamp>, set on load
    device: str = "cpu"

    @field_validator("doctors", "patient_adapters")
    @classmethod
    def _names_fit_setting_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        bad = [name for name in value if not _NAME_RE.fullmatch(name)]
        if bad:
            raise ValueError(f"names must be 1-64 of letters, digits, '.', '_', '-'; bad: {', '.join(bad)}")
        return value

    @field_validator("betas", "grid_betas")
    @classmethod
    def _betas_finite_and_unique(cls, value: list[float]) -> list[float]:
        if any(beta != beta or abs(beta) == float("inf") for beta in value):
            raise ValueError("every beta must be a finite number")
        return list(dict.fromkeys(value))  # a repeated beta would repeat a setting

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in SCORERS]
        if unknown:
            raise ValueError(f"unknown scorer(s) {', '.join(unknown)}; known: {', '.join(SCORERS)}")
        return list(dict.fromkeys(value))

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "cpu" and value != "cuda" and not value.startswith("cuda:"):
            raise ValueError("must be one of cpu, cuda (or cuda:N)")
        return value

    @model_validator(mode="after")
    def _names_distinct_and_default_output(self) -> EvalConfig:
        both = set(self.doctors) & set(self.patient_adapters)
        if both:
            raise ValueError(f"a name is both a doctor and a patient adapter: {', '.join(sorted(both))}")
        if self.output_dir is None:
            self.output_dir = default_eval_dir(self.model.name)
        return self


def default_eval_dir(model_name: str, now: datetime | None = None) -> Path:
    """`./eval/<model>-<YYYYmmdd-HHMMSS>`."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("eval") / f"{model_name}-{stamp}"


def load_eval_config(path: str | Path) -> EvalConfig:
    """Read and validate one eval YAML. Raises ConfigError (never a pydantic or YAML error)."""
    config, base = read_config(path, EvalConfig)
    return resolve_input_paths(config, base)


def resolve_input_paths(config: EvalConfig, base: Path) -> EvalConfig:
    """Relative input paths are relative to `base` (the config file's folder). Returns `config`."""
    config.prompts.path = _under(base, config.prompts.path)
    config.doctors = {name: _under(base, folder) for name, folder in config.doctors.items()}
    config.patient_adapters = {name: _under(base, folder) for name, folder in config.patient_adapters.items()}
    return config


def check_inputs(config: EvalConfig) -> None:
    """The named files exist; found before anything slow starts. Raises ConfigError naming the field."""
    if not config.prompts.path.is_file():
        raise ConfigError(f"prompts.path {config.prompts.path}: no such file", field="prompts.path")
    for section in ("doctors", "patient_adapters"):
        for name, folder in getattr(config, section).items():
            if not folder.is_dir():
                raise ConfigError(f"{section}.{name} {folder}: no such folder", field=f"{section}.{name}")
