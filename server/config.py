"""Server settings: one pydantic-settings model, read from `LLMDOCTOR_*` env vars and CLI flags.

Every field is both a flag (`--max-batch`) and an env var (`LLMDOCTOR_MAX_BATCH`); `server/cli.py`
builds its argparse options from these fields, so adding a setting here adds the flag too.
Flags win over env vars, env vars over the defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llmdoctor.server.adapter_folders import validate_adapter_name
from llmdoctor.server.errors import AdapterError

ENV_PREFIX = "LLMDOCTOR_"
# Room for a 128k-token prompt as JSON token ids (~7 bytes each) or as \uXXXX-escaped text, plus n,
# stop lists and guidance; far above what the embedded model's 2048-token context can use.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024


class NamedPath(BaseModel):
    """`NAME=PATH` as given to --doctor / --lora."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> NamedPath:
        name, sep, path = text.partition("=")
        if not sep or not path:
            raise ValueError(f"expected NAME=PATH, got {text!r}")
        try:
            validate_adapter_name(name)
        except AdapterError as exc:  # one naming rule for flags and POST /v1/adapters
            raise ValueError(exc.message) from None
        return cls(name=name, path=Path(path).expanduser())


def _split_list(value: object) -> object:
    """Env vars carry lists as a JSON array or comma-separated text; flags arrive as lists already."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class ServerSettings(BaseSettings):
    """Everything `llmdoctor serve` can be told. Field descriptions double as `--help` text."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    model: str | None = Field(
        None, description="patient model: a transformers folder or a .gguf file; unset = the embedded SmolLM2-135M"
    )
    doctor_base: str | None = Field(
        None,
        description="base model the doctor adapters sit on, a transformers folder or .gguf file; unset = the patient "
        "(doctor rows then share the patient's forward pass); must share the patient's tokenizer",
    )
    doctor: Annotated[list[NamedPath], NoDecode] = Field(
        default_factory=list, description="doctor adapter loaded at start, NAME=PATH (repeatable)"
    )
    default_doctors: bool = Field(
        True, description="load the doctors shipped with the embedded default (positivity, conciseness) at start; "
        "only when the patient and the doctor base are the embedded default; a --doctor of the same name wins"
    )
    lora: Annotated[list[NamedPath], NoDecode] = Field(
        default_factory=list, description="patient LoRA adapter loaded at start, NAME=PATH (repeatable)"
    )
    adapter_root: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folder that POST /v1/adapters may load from (repeatable)"
    )
    engine: Literal["auto", "torch", "vllm"] = Field("auto", description="inference engine: auto, torch or vllm")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the torch engine runs: auto = cuda when a GPU is visible, else cpu"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations: auto = bfloat16 on cuda, float32 on cpu (bf16 is slow on AVX2)"
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 = every interface)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on")
    api_key: SecretStr | None = Field(None, description="require 'Authorization: Bearer KEY' on every /v1 route")
    auth_all_routes: bool = Field(
        False, description="with --api-key: require the key on /metrics, /docs, /redoc and /openapi.json too; "
        "/health always stays open for load balancers"
    )
    max_batch: int = Field(32, ge=1, description="requests decoded together in one step")
    max_queue: int = Field(256, ge=0, description="requests allowed to wait for a slot; more get HTTP 503")
    max_request_bytes: int = Field(
        DEFAULT_MAX_REQUEST_BYTES, ge=1024, description="largest request body in bytes; a bigger one gets HTTP 413 "
        "(counted as it arrives, chunked bodies too)"
    )
    request_timeout: float = Field(600.0, gt=0, allow_inf_nan=False, description="seconds before a request is aborted")
    shutdown_grace: float = Field(
        30.0, ge=0, allow_inf_nan=False, description="seconds in-flight requests may finish after SIGTERM/SIGINT"
    )
    cache_dir: Path | None = Field(None, description="where converted models are cached (default ~/.cache/llmdoctor)")
    max_model_len: int | None = Field(
        None, ge=1, description="context length in tokens (default: the model's, at most 2048)"
    )
    max_lora_rank: int = Field(64, ge=1, description="largest LoRA rank an adapter may have")
    max_loras: int = Field(
        4, ge=1, description="vllm engine: patient LoRA adapters one decode batch may mix (vLLM's max_loras)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="logging level")
    log_completions: bool = Field(
        False, description="store every completion choice served (text, token ids, guidance, sampling) in the feedback "
        "database, and return its completion_id on each choice"
    )
    feedback_db: str | None = Field(
        None, description="the feedback database, a SQLAlchemy URL (sqlite:///PATH or postgresql+psycopg://...); "
        "given, it turns --log-completions on (unless --no-log-completions); default sqlite:///CACHE_DIR/feedback.db"
    )
    replicas: int | None = Field(
        None, ge=1, description="engine replicas on Ray Serve behind this server's API (one GPU each on GPUs); "
        "unset = one engine in this process, no Ray"
    )
    ray_address: str | None = Field(
        None, description="with --replicas: the Ray cluster to join ('auto', 'ray://HOST:10001'); unset = start a local Ray"
    )

    @property
    def completion_log_url(self) -> str | None:
        """The database served completions are logged to; None when they are not logged."""
        # --feedback-db alone turns logging on; an explicit --no-log-completions still keeps it off
        implied = self.feedback_db is not None and "log_completions" not in self.model_fields_set
        if not (self.log_completions or implied):
            return None
        if self.feedback_db is not None:
            return self.feedback_db
        from llmdoctor.server.feedback.database import default_url  # SQLAlchemy: only when logging
        from llmdoctor.server.model_store import default_cache_dir

        return default_url(self.cache_dir or default_cache_dir())

    @field_validator("doctor", "lora", mode="before")
    @classmethod
    def _parse_named_paths(cls, value: object) -> object:
        value = _split_list(value)
        if isinstance(value, list):
            return [NamedPath.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("adapter_root", mode="before")
    @classmethod
    def _parse_roots(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("doctor", "lora")
    @classmethod
    def _unique_names(cls, value: list[NamedPath]) -> list[NamedPath]:
        names = [v.name for v in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"adapter name given twice: {', '.join(duplicates)}")
        return value

    @field_validator("auth_all_routes")
    @classmethod
    def _all_routes_need_key(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("api_key") is None:
            raise ValueError("needs --api-key (there is no key to require)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class ConfigError(ValueError):
    """A setting that validated but cannot be served (e.g. an engine not built yet); names the flag."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, naming the flag, its env var and what was expected."""
    lines = []
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else "?"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] != "value_error":  # our own messages already quote the input
            message += f"; got {item.get('input')!r}"
        lines.append(f"{flag_name(field)} (env {env_name(field)}): {message}")
    return "\n".join(lines)
