"""What both engines read and check of a model before serving it: context length, end tokens,
attention layout, and that the doctor base shares the patient's tokenizer."""

from __future__ import annotations

from pathlib import Path

from llmdoctor.server.errors import InvalidRequestError

DEFAULT_MAX_MODEL_LEN = 2048  # a CPU serves short contexts; --max-model-len raises it


def max_model_len(config, requested: int | None) -> int:
    """--max-model-len, or the model's positions capped at DEFAULT_MAX_MODEL_LEN."""
    native = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_MODEL_LEN
    if requested is None:
        return min(native, DEFAULT_MAX_MODEL_LEN)
    if requested > native:
        raise InvalidRequestError(f"--max-model-len {requested} exceeds the model's {native} positions",
                                  "max_model_len")
    return requested


def eos_ids(generation_config, config) -> tuple[int, ...]:
    """The end-of-sequence ids: the generation config's, else the model config's."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    eos = eos if eos is not None else config.eos_token_id
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def check_full_attention(config, folder: Path | str) -> None:
    """The doctor runner's row cache assumes every layer attends to the whole prefix."""
    layer_types = getattr(config, "layer_types", None) or []
    if "sliding_attention" in layer_types or getattr(config, "use_sliding_window", False):
        raise InvalidRequestError(f"{folder}: sliding-window attention is not supported by the row cache", "model")


def check_same_vocabulary(patient_folder: Path, doctor_folder: Path) -> None:
    """DESIGN.md: patient and doctor must share a tokenizer; refuse a mismatch at load time."""
    from transformers import AutoTokenizer

    a = AutoTokenizer.from_pretrained(patient_folder).get_vocab()
    b = AutoTokenizer.from_pretrained(doctor_folder).get_vocab()
    if a != b:
        raise InvalidRequestError(
            f"the doctor base {doctor_folder} has a different tokenizer from the patient {patient_folder} "
            f"({len(b)} vs {len(a)} tokens, {len(set(a.items()) ^ set(b.items()))} entries differ); "
            "doctors must share the patient's vocabulary",
            "doctor_base",
        )
