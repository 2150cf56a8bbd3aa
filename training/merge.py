"""`llmdoctor merge --adapter DIR --output DIR [--model PATH] [--force]`: bake a patient LoRA into
the patient's weights and save a full transformers folder that `llmdoctor serve --model DIR` serves.

The patient is the adapter's recorded base model (`llmdoctor.json`, else peft's
`adapter_config.json`), resolved like `serve --model`; `--model` overrides it. Doctor adapters are
refused: a doctor guides decoding beside the patient, and merging it would replace the patient.
Exit status: 0 written, 2 a usage error (one line naming the flag).
Heavy imports (torch, transformers, peft) happen inside `run_merge`, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

EXIT_USAGE = 2
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_METADATA = "llmdoctor.json"
MODEL_MARKER = "llmdoctor_model.json"
EMBEDDED_ALIASES = ("embedded", "smollm2-135m-instruct")  # compared lower-case, last '/' component


class MergeError(ValueError):
    """A user mistake; the message names the flag and what was expected."""


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, type=Path, metavar="DIR", help="a patient LoRA adapter folder")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the merged model")
    parser.add_argument(
        "--model", metavar="PATH", help="the patient to merge into (default: the adapter's base model)"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output folder")


def run_merge(args: argparse.Namespace) -> int:
    from llmdoctor.server.model_store import ModelNotFoundError

    try:
        meta, config = check_adapter(args.adapter)
        check_output(args.output, args.adapter, args.force)
        patient = resolve_patient(args.model, meta, config)
    except (MergeError, ModelNotFoundError) as exc:
        print(f"llmdoctor merge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    merge_adapter(patient.folder, args.adapter, args.output.resolve())
    print(f"merged {args.adapter} into {patient.name}; serve it with: llmdoctor serve --model {args.output}")
    return 0


def check_adapter(adapter: Path) -> tuple[dict, dict]:
    """(llmdoctor.json or {}, adapter_config.json) of a patient LoRA folder; MergeError otherwise."""
    if not adapter.is_dir():
        raise MergeError(f"--adapter {adapter}: no such folder")
    if (adapter / "config.json").is_file() and not (adapter / ADAPTER_CONFIG).is_file():
        raise MergeError(
            f"--adapter {adapter}: is already a full model (e.g. from alignment.use_lora: false); nothing to "
            f"merge, serve it with: llmdoctor serve --model {adapter}"
        )
    try:
        config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        raise MergeError(f"--adapter {adapter}: not a LoRA adapter folder (no readable {ADAPTER_CONFIG})") from None
    if config.get("peft_type") != "LORA" or not (adapter / ADAPTER_WEIGHTS).is_file():
        raise MergeError(
            f"--adapter {adapter}: not a LoRA adapter folder (expected peft_type LORA and {ADAPTER_WEIGHTS})"
        )
    meta_file = adapter / ADAPTER_METADATA
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("kind") == "doctor":
        raise MergeError(
            f"--adapter {adapter}: is a doctor adapter; doctors guide the patient at decode time "
            "(serve --doctor), merging one would replace the patient. Merge a patient adapter instead"
        )
    return meta, config


def check_output(output: Path, adapter: Path, force: bool) -> None:
    if output.resolve() == adapter.resolve():
        raise MergeError(f"--output {output}: is the adapter folder; choose another folder")
    if output.exists() and not output.is_dir():
        raise MergeError(f"--output {output}: is a file; expected a new or empty folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise MergeError(f"--output {output}: folder exists and is not empty; pass --force to replace it")


def resolve_patient(model: str | None, meta: dict, config: dict):
    """`--model`, else the adapter's recorded base model; the served embedded name means embedded."""
    from llmdoctor.server.model_store import ModelNotFoundError, resolve_model

    if model is not None:
        return resolve_model(model)
    base = meta.get("base_model") or config.get("base_model_name_or_path")
    if base is None or base.rstrip("/").rsplit("/", 1)[-1].lower() in EMBEDDED_ALIASES:
        return resolve_model(None)
    try:
        return resolve_model(base)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} (the adapter's base model); pass --model PATH") from None


def merge_adapter(patient_folder: Path, adapter: Path, output: Path) -> None:
    """Load patient + LoRA, merge, save safetensors + tokenizer + marker to `output` (an absolute
    path, replaced whole if it exists)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # 1) patient with the adapter on top, float32 (the served patient's dtype)
    model = AutoModelForCausalLM.from_pretrained(patient_folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter)
    # 2) W <- W + (alpha / r) * B @ A in every target module; the LoRA layers are removed
    merged = model.merge_and_unload()
    # 3) write beside the target, then swap in: a failed run leaves no half-written model
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(patient_folder).save_pretrained(tmp)
    marker = {"name": output.name, "source": str(patient_folder), "merged_from": str(adapter.resolve())}
    (tmp / MODEL_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
