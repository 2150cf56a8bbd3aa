"""Training config: one YAML file (`llmdoctor train dpo|gdpo --config align.yaml`), validated by pydantic.

Layout (the LexAlign one): `model`, `dataset`, `alignment`, `device`. Unknown keys are refused and the
error lists the known ones; every error names the dotted field (`alignment.beta`) and what was expected.

Paths: `model.path`, `model.base_model` and `dataset.path` given relative resolve against the folder of
the config file (so a config works from any working directory); `alignment.output_dir` resolves against
the working directory, where checkpoints are expected to land.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmdoctor.server.errors import InvalidRequestError
from llmdoctor.server.model_store import EMBEDDED, EMBEDDED_NAME

ModelT = TypeVar("ModelT", bound=BaseModel)

Method = Literal["dpo", "gdpo", "sft"]
DataFormat = Literal["auto", "json", "jsonl", "csv", "parquet", "datasets"]


class ConfigError(InvalidRequestError):
    """A user mistake in the training config or the files it names. `field` is the dotted key at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message, param=field)
        self.field = field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The patient to align. `path: embedded` is the embedded default, resolved by the trainer with
    `model_store.resolve_model(None)`; otherwise a transformers folder or a .gguf file."""

    path: str = EMBEDDED
    base_model: str | None = None  # tokenizer source when the model folder has none

    @property
    def name(self) -> str:
        """The name used in the default output_dir (no model is loaded to find it)."""
        if self.path == EMBEDDED:
            return EMBEDDED_NAME
        path = Path(self.path)
        return path.stem if path.suffix == ".gguf" else path.name


class DatasetConfig(_Section):
    """Where the preference rows are and how their columns are named."""

    path: Path
    format: DataFormat = "auto"
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    responses_field: str = "responses"  # GDPO: K responses, best first (or ranked by scores_field)
    scores_field: str | None = None  # GDPO: one score per response, higher is better
    instruction_field: str = "instruction"  # SFT: the prompt of an instruction / response row
    response_field: str = "response"  # SFT: the answer to learn
    messages_field: str = "messages"  # SFT: chat rows, the last message the assistant's answer
    label_field: str | None = None  # SFT / k-fold: a label to stratify folds by (and to score against)
    train_split: str = "train"
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    max_length: int = Field(1024, gt=0)  # tokens, prompt + response


class AlignmentConfig(_Section):
    """The method and its hyper-parameters. GDPO keys are accepted (and ignored) by DPO."""

    method: Method
    output_dir: Path | None = None  # None = ./checkpoints/<model>-aligned-<timestamp>, set on load
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    group_delay_size: int = 4
    group_delay_weight: float = Field(0.5, ge=0, le=1)
    use_lora: bool = True
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    # the final adapter's weights on disk (training is float32; checkpoints stay float32 to resume exactly)
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_epochs: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(None, ge=1)  # keep the newest N checkpoints; None = all
    max_steps: int | None = Field(None, ge=1)  # None = num_epochs decide
    seed: int = 42
    eval_steps: int | None = Field(None, ge=1)  # None = evaluate once per epoch (when there is a split)

    @field_validator("group_delay_size")
    @classmethod
    def _group_of_two_or_more(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be >= 2 (a group needs at least 2 ranked responses: a best and a worse one)")
        return value


class TrainingConfig(_Section):
    """The whole YAML file."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    dataset: DatasetConfig
    alignment: AlignmentConfig
    device: Literal["cuda", "cpu"] = "cpu"

    @model_validator(mode="after")
    def _default_output_dir(self) -> TrainingConfig:
        if self.alignment.output_dir is None:
            self.alignment.output_dir = default_output_dir(self.model.name)
        return self


def default_output_dir(model_name: str, now: datetime | None = None) -> Path:
    """`./checkpoints/<model>-aligned-<YYYYmmdd-HHMMSS>`."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("checkpoints") / f"{model_name}-aligned-{stamp}"


def load_config(path: str | Path) -> TrainingConfig:
    """Read and validate one YAML config. Raises ConfigError (never a pydantic or YAML error)."""
    config, base = read_config(path, TrainingConfig)
    config.dataset.path = _under(base, config.dataset.path)
    return config


def read_config(path: str | Path, root: type[ModelT]) -> tuple[ModelT, Path]:
    """One YAML file validated as `root` (a config with a `model` section, whose paths are resolved), and the
    folder the file's other relative input paths are relative to. Raises ConfigError naming the field."""
    path = Path(path).expanduser()
    raw = _read_yaml(path, root)
    try:
        config = root.model_validate(raw)
    except ValidationError as exc:
        raise config_error_from(exc, source=str(path), root=root) from None
    base = path.resolve().parent
    resolve_model_paths(config.model, base)
    return config, base


def _read_yaml(path: Path, root: type[BaseModel] | None = None) -> dict[str, Any]:
    """The YAML mapping in `path`; `root` (default TrainingConfig) names the expected sections."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found", field="config")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}", field="config") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text", field="config") from None
    if not isinstance(raw, dict):
        sections = ", ".join((root or TrainingConfig).model_fields)
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise ConfigError(f"config file {path} must be a mapping with the sections {sections}; got {got}", "config")
    return raw


def resolve_model_paths(model: ModelConfig, base: Path) -> None:
    """The model section's relative paths are relative to the config file's folder."""
    if model.path != EMBEDDED:
        model.path = str(_under(base, model.path))
    if model.base_model and _under(base, model.base_model).exists():  # else maybe a name the loader knows
        model.base_model = str(_under(base, model.base_model))


def _under(base: Path, path: str | Path) -> Path:
    """`path` if absolute, else `base/path` with `..` folded (`configs/../data` -> `data`)."""
    return Path(os.path.normpath(base / Path(path).expanduser()))


# ---- validation errors: one line per error, "dotted.field: expected ..., got ..." -------------------

_BOUNDS = {
    "greater_than": "> {gt}",
    "greater_than_equal": ">= {ge}",
    "less_than": "< {lt}",
    "less_than_equal": "<= {le}",
}
_TYPES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "path_type": "a path",
}


def config_error_from(
    exc: ValidationError, source: str = "config", root: type[BaseModel] | None = None
) -> ConfigError:
    """One ConfigError listing every pydantic error as `field: expected, got value`. `root` is the
    model that was validated (default TrainingConfig): unknown keys list the known keys from it."""
    lines = [_describe(error, root or TrainingConfig) for error in exc.errors()]
    first = ".".join(str(part) for part in exc.errors()[0]["loc"]) if exc.errors() else None
    body = "\n".join(f"  {field}: {text}" for field, text in lines)
    return ConfigError(f"{source} is invalid:\n{body}", field=first)


def _describe(error: dict[str, Any], root: type[BaseModel]) -> tuple[str, str]:
    loc = tuple(error["loc"])
    field = ".".join(str(part) for part in loc) or "config"
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return field, "required, missing"
    if kind == "extra_forbidden":
        return field, f"unknown key; known keys: {', '.join(_known_keys(loc[:-1], root))}"
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace(" or ", ", ").replace("'", "")
        return field, f"must be one of {choices}, got {value!r}"
    if kind in _BOUNDS:
        bound = {key: f"{number:g}" for key, number in ctx.items()}  # 0.0 -> 0
        return field, f"must be {_BOUNDS[kind].format(**bound)}, got {value!r}"
    if kind == "too_short":
        return field, f"must have at least {ctx.get('min_length')} item(s), got {value!r}"
    if kind == "value_error":
        return field, f"{ctx.get('error', error['msg'])}, got {value!r}"
    if kind in _TYPES:
        return field, f"must be {_TYPES[kind]}, got {value!r}"
    return field, f"{error['msg']}, got {value!r}"


def _known_keys(parent: tuple, root: type[BaseModel]) -> list[str]:
    """The field names of the section at `parent` (a loc prefix such as ('alignment',)) of `root`."""
    model: type[BaseModel] = root
    for part in parent:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)
