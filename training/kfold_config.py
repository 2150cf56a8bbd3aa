"""`llmdoctor kfold --config FILE`: one YAML file, validated by pydantic, in the training configs' conventions
(config.py: unknown keys refused, every error names its dotted field, input paths relative to the file).

Sections: `model` and `dataset` as for `train sft`; `folds` (k, seed, stratify); `sft` (the adapter each fold
trains: AlignmentConfig's keys, method sft implied); `predict` (how the held-out rows are answered); `score`;
`compare` (the same folds answered by the bare patient and by the patient guided by named doctors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmdoctor.server.engine.protocol import MAX_WEIGHT, GuidanceMode
from llmdoctor.training.config import (
    AlignmentConfig,
    ConfigError,
    DatasetConfig,
    ModelConfig,
    _Section,
    _under,
    read_config,
)



class FoldsConfig(_Section):
    k: int = Field(5, ge=2, description="folds: each row is held out exactly once")
    seed: int = 0
    stratify: bool = True  # by dataset.label_field, when it is set: every fold gets each label's share


class SftSection(AlignmentConfig):
    """AlignmentConfig with method sft; output_dir is set per fold by the run."""

    method: Literal["sft"] = "sft"


class PredictConfig(_Section):
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)  # 0 = greedy
    seed: int = 0  # sampled predictions: each row's seed is this plus its index, so a rerun repeats them
    concurrency: int = Field(32, ge=1, description="held-out rows in flight at once per engine (it batches them)")
    replicas: int = Field(1, ge=1, description="engines answering on Ray actors (one GPU each where the cluster "
                                              "has GPUs); 1 = in this process")
    ray_address: str | None = Field(None, description="with replicas: the Ray cluster to join ('auto', "
                                                      "'ray://HOST:10001'); unset = a local Ray for the run")


class DoctorEntry(_Section):
    name: str = Field(min_length=1)
    beta: float = Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)
    mode: GuidanceMode = "product"


class GuidedSetting(_Section):
    """The guidance a compared setting sends with every held-out row (the API's `guidance` field)."""

    alpha: float = Field(1.0, ge=0, le=MAX_WEIGHT)
    doctors: list[DoctorEntry] = Field(min_length=1)


class CompareConfig(_Section):
    patient: bool = True  # the bare patient answers every fold too
    doctors: dict[str, Path] = Field(default_factory=dict, description="doctor name -> adapter folder, loaded once")
    default_doctors: bool = True  # the doctors shipped with the embedded default (positivity, conciseness)
    guided: dict[str, GuidedSetting] = Field(default_factory=dict, description="setting name -> guidance")


class KfoldConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    dataset: DatasetConfig
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    sft: SftSection = Field(default_factory=SftSection)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    score: str = Field("exact_match", description="exact_match | first_token | a `data synth` scorer (sentiment, "
                                                   "length, length_long): see kfold_scoring.py")
    compare: CompareConfig = Field(default_factory=CompareConfig)
    output_dir: Path
    device: Literal["cuda", "cpu"] = "cpu"

    @field_validator("score")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        from llmdoctor.training.kfold_scoring import known_metrics

        if value not in known_metrics():
            raise ValueError(f"expected one of {', '.join(known_metrics())}")
        return value

    @model_validator(mode="after")
    def _settings_named_once(self) -> KfoldConfig:
        taken = {"sft", "patient"} & set(self.compare.guided)
        if taken:
            raise ValueError(f"compare.guided names a setting {sorted(taken)[0]!r}, which the report uses already")
        return self


def load_kfold_config(path: str | Path) -> KfoldConfig:
    """Read and validate; ConfigError (naming the field) otherwise."""
    config, base = read_config(path, KfoldConfig)
    config.dataset.path = _under(base, config.dataset.path)
    config.compare.doctors = {name: _under(base, folder) for name, folder in config.compare.doctors.items()}
    if config.compare.guided and not (config.compare.doctors or config.compare.default_doctors):
        raise ConfigError("compare.guided needs doctors: name them in compare.doctors or keep "
                          "compare.default_doctors", field="compare.doctors")
    return config
