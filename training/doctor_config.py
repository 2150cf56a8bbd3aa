"""Configs of the two doctor stages, YAML validated by pydantic like `config.py` (same errors:
every message names the dotted field and what was expected; unknown keys list the known ones).

    llmdoctor train rewards --config rewards.yaml     # RewardsConfig: model, dataset, rewards, device
    llmdoctor train doctor  --config doctor.yaml      # DoctorConfig:  model, data, doctor, device

`model` in a rewards config is the patient whose two faces score the tokens; in a doctor config
it is the doctor's base (the patient by default: then doctor rows ride in the patient's forward
at serving time). Both must share a tokenizer; the doctor stage checks it. Relative input paths
resolve against the config file's folder; output paths against the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from llmdoctor.training.config import (
    ConfigError,
    DatasetConfig,
    ModelConfig,
    _read_yaml,
    _Section,
    _under,
    config_error_from,
)
from llmdoctor.training.faces import DIMENSIONS, Faces, default_faces


class RewardsSection(_Section):
    """Stage 1: how token rewards are computed (token_rewards.py has the formulas)."""

    dimension: str = "helpfulness"  # a name; the faces default to DIMENSIONS[dimension] when it is one
    positive_face: str | None = None  # behaviour prompt of pi_pos (a system turn); None = the dimension's
    negative_face: str | None = None
    tau: float = Field(1.0, gt=0)  # temperature on the normaliser mean_j Delta_j
    theta: float = Field(0.1, ge=0, lt=1)  # sparsity threshold on S_t
    # where each token reward's sign comes from (token_rewards.py): the pair's label (the paper's form),
    # the faces' own side of the token, or the label where the faces agree with it
    direction: Literal["preference", "faces", "agree"] = "preference"
    epsilon: float = Field(1e-6, gt=0)
    batch_size: int = Field(8, ge=1)  # preference rows per forward (x2 responses x2 faces sequences)
    output: Path = Path("token_rewards.jsonl")  # .jsonl or .parquet

    @model_validator(mode="after")
    def _faces_known(self) -> RewardsSection:
        if self.dimension not in DIMENSIONS and not (self.positive_face and self.negative_face):
            raise ValueError(
                f"dimension {self.dimension!r} has no default faces (known: {', '.join(DIMENSIONS)}); "
                "set rewards.positive_face and rewards.negative_face"
            )
        if Path(self.output).suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"output must end in .jsonl or .parquet, got {str(self.output)!r}")
        return self

    def faces(self) -> Faces:
        defaults = default_faces(self.dimension)
        return Faces(
            self.positive_face or defaults.positive,
            self.negative_face or defaults.negative,
        )


class RewardsConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    dataset: DatasetConfig
    rewards: RewardsSection = Field(default_factory=RewardsSection)
    device: Literal["cuda", "cpu"] = "cpu"


class DoctorDataConfig(_Section):
    """Where stage 1's token rewards are."""

    path: Path  # a token-rewards file written by `llmdoctor train rewards`
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    max_length: int = Field(1024, gt=0)  # tokens, prompt + response; longer rows are reported and skipped


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-style names


class DoctorSection(_Section):
    """Stage 2, TFPO: the doctor LoRA, its value head, the losses' weights and the run."""

    dimension: str | None = None  # default: the dimension recorded in the rewards file
    output_dir: Path | None = None  # None = ./checkpoints/doctor-<dimension>-<timestamp>
    # TFPO (tfpo_losses.py): L = L_SubTB + value_weight * L_value
    subtb_lambda: float = Field(0.9, gt=0, le=1)  # sub-trajectory (m, n) weighs subtb_lambda ** (n - m)
    value_margin: float = Field(0.1, ge=0)  # gamma of the value-discrimination hinge
    value_weight: float = Field(1.0, ge=0)  # lambda
    # log Q(s_t) = reward_scale * sum_{k<=t} r_k: the flow's reward exponent (a GFlowNet's 1 / temperature).
    # r_t <= 1, so at 1 the doctor moves a token's log-prob by about a nat at most; in ratio mode the
    # request's beta multiplies that tilt, so a larger scale is rarely needed (at 4 a conciseness doctor
    # pushed its answers' tokens so far down that it wrote gibberish; README "Training").
    reward_scale: float = Field(1.0, gt=0)
    policy_term: Literal["log_ratio", "logprob"] = "log_ratio"  # what the flow explains (tfpo_losses.py)
    value_head_hidden: int = Field(256, ge=1)
    # the doctor LoRA and the run (as in a DPO config)
    # Measured on the embedded model (the positivity recipe's 128 pairs, 64 steps, r 16 on every linear
    # layer): at lr 2e-3 the TFPO loss rose during training (2.6 -> 13-17) and the doctor's tilt from
    # the patient was noise (no sentiment gain at any beta in ratio mode); at lr 5e-4 the loss fell
    # (2.6 -> ~1) and the tilt generalised to held-out prompts (README "Training", issue-16 findings).
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1)
    # the final adapter's weights on disk (training is float32; checkpoints stay float32 to resume exactly)
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(4, ge=1)  # preference rows (2 sequences each)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_epochs: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    seed: int = 42


class DoctorConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DoctorDataConfig
    doctor: DoctorSection = Field(default_factory=DoctorSection)
    device: Literal["cuda", "cpu"] = "cpu"


def load_rewards_config(path: str | Path) -> RewardsConfig:
    """Read and validate a stage-1 config; raises ConfigError."""
    config = _load(path, RewardsConfig)
    config.dataset.path = _under(Path(path).resolve().parent, config.dataset.path)
    return config


def load_doctor_config(path: str | Path) -> DoctorConfig:
    """Read and validate a stage-2 config; raises ConfigError."""
    config = _load(path, DoctorConfig)
    config.data.path = _under(Path(path).resolve().parent, config.data.path)
    return config


def _load(path: str | Path, schema):
    path = Path(path).expanduser()
    raw = _read_yaml(path, schema)
    try:
        config = schema.model_validate(raw)
    except ValidationError as exc:
        raise config_error_from(exc, source=str(path), root=schema) from None
    model = config.model
    if model.path != "embedded":
        model.path = str(_under(path.resolve().parent, model.path))
    return config


__all__ = ["ConfigError", "DoctorConfig", "RewardsConfig", "load_doctor_config", "load_rewards_config"]
