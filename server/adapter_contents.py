"""Check what an adapter folder's files hold against what the engines can batch and the model has.

Engine-independent: the API service and the startup flags run it through `inspect_adapter`
(adapter_folders.py), and every engine runs it again, on its own disk, on the very bytes it then
loads (`read_adapter_bytes` + `check_adapter_contents`): a replica checks for itself, and no file
can be swapped between the check and the load.

Only plain LoRA on linear layers is served: peft's mixed-adapter batches (torch engine, doctors)
and vLLM's punica kernels both batch exactly that. Every option in adapter_config.json is either
one we serve (type-checked), one that must keep its plain-LoRA value (DoRA, biases, modules_to_save,
...), or one that must be unset. `rank_pattern` / `alpha_pattern` keys and `target_modules` must be
plain module names: peft and vLLM use them as regular expressions, and a name cannot backtrack.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from llmdoctor.server.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_WEIGHTS_BYTES = 4 << 30  # an r 64 adapter on every linear layer of an 8 B model is ~0.7 GB

# The options we serve, and the types their values must have.
_NUMBER = (int, float)
SERVED_OPTIONS: dict[str, tuple[type, ...]] = {
    "r": (int,),
    "lora_alpha": _NUMBER,
    "lora_dropout": _NUMBER,  # training only
    "use_rslora": (bool,),
    "inference_mode": (bool,),
    "target_modules": (list,),
    "rank_pattern": (dict,),
    "alpha_pattern": (dict,),
}
# Options that must keep the plain-LoRA value: anything else changes the forward in a way one of
# the engines cannot batch (vLLM's peft_helper.py refuses most of these too).
PLAIN_VALUES: dict[str, object] = {
    "peft_type": "LORA",
    "bias": "none",
    "lora_bias": False,
    "use_dora": False,
    "fan_in_fan_out": False,
    "use_qalora": False,
    "ensure_weight_tying": False,
}
# Descriptive fields, read by nobody at inference.
IGNORED_OPTIONS = frozenset({"base_model_name_or_path", "revision", "task_type", "peft_version", "auto_mapping",
                             "megatron_core", "qalora_group_size", "init_lora_weights"})
# init_lora_weights values that modify the base model when peft loads the adapter (vLLM refuses them too)
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# Modules that are not linear projections though their weight is 2-D.
_NOT_LINEAR = frozenset({"embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out", "word_embeddings",
                         "embed_positions"})
_PREFIX = "base_model.model."  # peft's saved keys: base_model.model.<module>.lora_A.weight
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors' name: "F32", "BF16", ...


def read_adapter_bytes(folder: Path, path: str) -> tuple[bytes, bytes]:
    """(adapter_config.json bytes, adapter_model.safetensors bytes), each read once."""
    return _read(folder / CONFIG_FILE, path, 1 << 20), _read(folder / WEIGHTS_FILE, path, MAX_WEIGHTS_BYTES)


def _read(file: Path, path: str, limit: int) -> bytes:
    try:
        with open(file, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise AdapterError(f"adapter {path!r}: cannot read {file.name}: {e.strerror or type(e).__name__}", "path") from e
    if len(data) > limit:
        raise AdapterError(f"adapter {path!r}: {file.name} is larger than {limit} bytes", "path")
    return data


def header_of(weights: bytes, path: str) -> dict[str, TensorInfo]:
    """Every tensor's shape and dtype from a safetensors file's bytes (its header; no tensor data)."""
    import json
    import struct

    try:
        (size,) = struct.unpack("<Q", weights[:8])
        header = json.loads(weights[8 : 8 + size])
        if not isinstance(header, dict) or 8 + size > len(weights):
            raise ValueError("the header is not a JSON object inside the file")
        return {key: TensorInfo(tuple(v["shape"]), v["dtype"]) for key, v in header.items() if key != "__metadata__"}
    except Exception as e:  # struct.error, ValueError, KeyError, TypeError: a damaged or foreign file
        raise AdapterError(f"adapter {path!r}: {WEIGHTS_FILE} is not a readable safetensors file: {e}", "path") from e


@functools.lru_cache(maxsize=8)
def linear_shapes(model_folder: Path) -> Mapping[str, tuple[int, int]]:
    """module name -> (out, in) of every linear layer a LoRA may target, from the model's own
    safetensors headers (no weights loaded): what an adapter's tensors must fit."""
    shapes: dict[str, tuple[int, int]] = {}
    for file in sorted(Path(model_folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                module, _, leaf = key.rpartition(".")
                shape = tuple(f.get_slice(key).get_shape())
                if leaf == "weight" and len(shape) == 2 and module.rpartition(".")[2] not in _NOT_LINEAR:
                    shapes[module] = shape
    return shapes


def check_adapter_contents(
    config: dict, tensors: Mapping[str, TensorInfo], path: str, max_rank: int,
    model_shapes: Mapping[str, tuple[int, int]] | None = None,
) -> list[int]:
    """Raise AdapterError (naming the option) unless this is plain LoRA the engines can batch and,
    given `model_shapes`, whose tensors are exactly those the config declares for that model.
    Returns the ranks (r and rank_pattern values)."""
    check_options(config, path)
    ranks = _check_ranks(config, path, max_rank)
    if model_shapes is None:
        _check_tensor_pairs(config, tensors, path)
    else:
        _check_tensors_fit_model(config, tensors, model_shapes, path)
    return ranks


def check_options(config: dict, path: str) -> None:
    """Every option served (with the right type), plain, ignored, or unset."""
    for option, value in config.items():
        if option == "r":
            continue  # _check_ranks: an integer within the server's maximum
        if option in SERVED_OPTIONS:
            if isinstance(value, bool) and bool not in SERVED_OPTIONS[option] or \
                    not isinstance(value, SERVED_OPTIONS[option]):
                kinds = " or ".join(t.__name__ for t in SERVED_OPTIONS[option])
                raise AdapterError(f"adapter {path!r}: {CONFIG_FILE} option {option!r} must be a {kinds}, "
                                   f"got {value!r}", option)
        elif option in PLAIN_VALUES:
            if value != PLAIN_VALUES[option] or type(value) is not type(PLAIN_VALUES[option]):
                raise AdapterError(_unsupported(path, option, value, f"only {PLAIN_VALUES[option]} is served"),
                                   option)
        elif option == "init_lora_weights":
            _check_init(value, path)
        elif option not in IGNORED_OPTIONS and value not in (None, False, {}, [], ""):
            raise AdapterError(_unsupported(path, option, value, "only plain LoRA options are served"), option)
    if "r" not in config:
        raise AdapterError(f"adapter {path!r}: {CONFIG_FILE} has no rank 'r'", "r")
    if not config.get("target_modules"):
        raise AdapterError(f"adapter {path!r}: {CONFIG_FILE} option 'target_modules' must list module names",
                           "target_modules")
    for option in ("target_modules", "rank_pattern", "alpha_pattern"):
        for name in config.get(option) or ():
            if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
                raise AdapterError(f"adapter {path!r}: {option} entry {name!r} is not a module name (expected "
                                   "names such as 'q_proj' or 'model.layers.0.self_attn.q_proj')", option)
    for value in (config.get("alpha_pattern") or {}).values():
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            raise AdapterError(f"adapter {path!r}: alpha_pattern values must be numbers, got {value!r}",
                               "alpha_pattern")


def _check_init(value, path: str) -> None:
    if isinstance(value, str) and value.lower().startswith(_BASE_CHANGING_INITS):
        raise AdapterError(_unsupported(path, "init_lora_weights", value, "it changes the base model's weights"),
                           "init_lora_weights")


def _unsupported(path: str, option: str, value, why: str) -> str:
    return (f"adapter {path!r}: {CONFIG_FILE} option {option}={value!r} is not supported ({why}; the engines "
            f"batch plain LoRA on linear layers only: options {sorted(SERVED_OPTIONS)})")


def _check_ranks(config: dict, path: str, max_rank: int) -> list[int]:
    ranks = [("r", config["r"])] + [("rank_pattern", r) for r in (config.get("rank_pattern") or {}).values()]
    for option, rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= max_rank:
            raise AdapterError(f"adapter {path!r}: bad rank {rank!r} in {CONFIG_FILE} {option}; expected an "
                               f"integer from 1 to {max_rank} (this server's maximum LoRA rank)", option)
    return [rank for _, rank in ranks]


def module_rank(module: str, config: dict) -> int:
    """peft's and vLLM's rule: the first rank_pattern key matching the module name's end, else r.
    Keys are plain names (check_options), so the match cannot backtrack."""
    for key, rank in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return rank
    return config["r"]


def _lora_modules(tensors: Mapping[str, TensorInfo], path: str) -> dict[str, dict[str, TensorInfo]]:
    """module -> {"A": info, "B": info}; any other tensor is refused."""
    modules: dict[str, dict[str, TensorInfo]] = {}
    for key, info in tensors.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])\.weight", key)
        if match is None:
            raise AdapterError(f"adapter {path!r}: {WEIGHTS_FILE} holds {key!r}, which is not a LoRA A/B weight of "
                               "a linear layer (embeddings, biases and saved modules are not served)", "path")
        if info.dtype not in _FLOAT_DTYPES or len(info.shape) != 2:
            raise AdapterError(f"adapter {path!r}: {key} must be a 2-D float tensor, got {info.dtype} "
                               f"{list(info.shape)}", "path")
        modules.setdefault(match["module"], {})[match["side"]] = info
    if not modules:
        raise AdapterError(f"adapter {path!r}: {WEIGHTS_FILE} holds no LoRA tensors (lora_A / lora_B)", "path")
    for module, sides in modules.items():
        if set(sides) != {"A", "B"}:
            raise AdapterError(f"adapter {path!r}: {module} has lora_{''.join(sides)} but not both A and B", "path")
    return modules


def _check_tensor_pairs(config: dict, tensors: Mapping[str, TensorInfo], path: str) -> None:
    """Without the model: every A/B pair has the rank the config gives its module."""
    for module, sides in sorted(_lora_modules(tensors, path).items()):
        _check_rank_of(module, sides, module_rank(module, config), path)


def _check_rank_of(module: str, sides: dict[str, TensorInfo], rank: int, path: str) -> None:
    a, b = sides["A"].shape, sides["B"].shape  # A: (r, in), B: (out, r)
    if a[0] != rank or b[1] != rank:
        raise AdapterError(f"adapter {path!r}: bad rank in {WEIGHTS_FILE}: {module} has lora_A {list(a)} and "
                           f"lora_B {list(b)}, but {CONFIG_FILE} gives rank {rank}", "r")


def _check_tensors_fit_model(config: dict, tensors: Mapping[str, TensorInfo],
                             model_shapes: Mapping[str, tuple[int, int]], path: str) -> None:
    """The tensors are exactly the targeted modules' A/B pairs, with the model's shapes."""
    modules = _lora_modules(tensors, path)
    targets = config["target_modules"]
    for target in targets:
        if not any(_targets(module, [target]) for module in model_shapes):
            raise AdapterError(f"adapter {path!r}: target_modules entry {target!r} names no linear layer of the "
                               f"model (its linear layers end in {_leaf_names(model_shapes)})", "target_modules")
    for option in ("rank_pattern", "alpha_pattern"):
        for key in config.get(option) or {}:
            if not any(_targets(module, [key]) for module in model_shapes):
                raise AdapterError(f"adapter {path!r}: {option} key {key!r} names no linear layer of the model",
                                   option)
    expected = sorted(m for m in model_shapes if _targets(m, targets))
    missing, extra = sorted(set(expected) - set(modules)), sorted(set(modules) - set(expected))
    if missing or extra:
        raise AdapterError(f"adapter {path!r}: {WEIGHTS_FILE} does not hold what target_modules declares: "
                           f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}", "target_modules")
    for module in expected:
        sides, (out, inp) = modules[module], model_shapes[module]
        _check_rank_of(module, sides, module_rank(module, config), path)
        if sides["A"].shape[1] != inp or sides["B"].shape[0] != out:
            raise AdapterError(f"adapter {path!r}: {module} has lora_A {list(sides['A'].shape)} and lora_B "
                               f"{list(sides['B'].shape)}, which do not fit the model's layer of shape "
                               f"[{out}, {inp}]", "path")


def _targets(module: str, targets) -> bool:
    """peft's rule for a list of names: the module's name is one of them or ends in '.' + one."""
    return any(module == t or module.endswith("." + t) for t in targets)


def _leaf_names(model_shapes: Mapping[str, tuple[int, int]]) -> list[str]:
    return sorted({m.rpartition(".")[2] for m in model_shapes})
