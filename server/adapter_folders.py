"""Check an adapter folder before the server loads it: where it is, what it holds, what it fits.

The contract between training/ and server/ (DESIGN.md, "Adapter folders"): a peft LoRA folder
(`adapter_config.json`, `adapter_model.safetensors`, never pickles) plus `llmdoctor.json`, which
plain peft folders may lack. `read_adapter` reads the config and weights into memory once and
checks those bytes (what they may hold: adapter_contents.py); engines build the adapter from the
same bytes, so nothing can be swapped between check and load. `inspect_adapter` is its verdict.

Which error, when (the same rule everywhere here):
- ForbiddenError (403): no adapter root configured, or the path resolves outside every root.
  Decided before looking whether the path exists, so 403 vs 404 tells nothing about the disk
  outside the roots.
- NotFoundError (404): the path, inside a root, names nothing.
- AdapterError (400): it names something that is not a loadable adapter for this server
  (a file, missing or pickle files, bad JSON, bad rank, wrong kind, wrong base model).

Base-model match rule (`base_model_matches`): the names are equal after keeping only the last
'/'-separated component and ignoring case, so "HuggingFaceTB/SmolLM2-135M-Instruct" matches
the served name "SmolLM2-135M-Instruct". Trainers should record the served model's name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from llmdoctor.server.adapter_contents import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_adapter_contents,
    header_of,
    linear_shapes,
    read_adapter_bytes,
)
from llmdoctor.server.errors import AdapterError, ForbiddenError, NotFoundError
from llmdoctor.server.model_store import converted_model_name

METADATA_FILE = "llmdoctor.json"
KINDS = ("patient", "doctor")
# Pickles can run code when loaded; a folder with only these is refused, never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_JSON_BYTES = 1 << 20  # adapter_config.json is ~1 KB; refuse to read a huge one into memory
MAX_NAME_LEN = 64
_NAME_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME_LEN}}}")


@dataclass(frozen=True)
class AdapterManifest:
    """What an adapter folder is, independent of the name it is loaded under."""

    path: Path  # the resolved folder, inside an adapter root
    kind: str  # "patient" | "doctor"
    base_model: str  # as the folder states it (llmdoctor.json, else adapter_config.json)
    rank: int  # the largest LoRA rank of any module (r, or a larger rank_pattern entry)
    lora_alpha: float
    target_modules: tuple[str, ...]  # sorted module names, or the one regex adapter_config.json gives
    meta: dict = field(default_factory=dict, compare=False)  # llmdoctor.json; {} for plain peft

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def weights_file(self) -> Path:
        """The only weights file a loader may read (never a pickle lying beside it)."""
        return self.path / WEIGHTS_FILE


@dataclass(frozen=True)
class CheckedAdapter:
    """An adapter folder's bytes as read once and checked: build the adapter from these, not the disk."""

    manifest: AdapterManifest
    config: dict  # adapter_config.json, parsed
    weights: bytes = field(repr=False)  # adapter_model.safetensors, whole


def inspect_adapter(
    path: str, roots: Sequence[Path], kind: str, expected_base: str, max_rank: int = 64,
    model_shapes: Mapping[str, tuple[int, int]] | None = None,
) -> AdapterManifest:
    """Check that `path` is a loadable adapter of `kind` for `expected_base`; raise if it is not.

    `path` is absolute, or relative to the adapter roots (tried in order, first existing wins).
    Raises ForbiddenError / NotFoundError / AdapterError as the module docstring says.
    With `model_shapes` (adapter_contents.linear_shapes of the base) the tensors are checked
    against the model's layers too. An engine does not load from the folder after this: it calls
    `read_adapter` and loads the bytes that call checked.
    """
    return read_adapter(path, roots, kind, expected_base, max_rank, model_shapes).manifest


def read_adapter(
    path: str, roots: Sequence[Path], kind: str, expected_base: str | None, max_rank: int = 64,
    model_shapes: Mapping[str, tuple[int, int]] | None = None,
) -> CheckedAdapter:
    """Read the folder's config and weights into memory once, check those bytes (inspect_adapter's
    checks), and return them: what a loader builds the adapter from, with no window for a swap.
    `expected_base` None: the base model's name is not compared (the caller compares shapes)."""
    _check_kind(kind)
    folder = resolve_adapter_path(path, roots)
    _check_files(folder, path, _real_roots(roots))
    config_bytes, weights = read_adapter_bytes(folder, path)
    config = _parse_json(config_bytes, CONFIG_FILE, path)
    ranks = check_adapter_contents(config, header_of(weights, path), path, max_rank, model_shapes)
    meta = _read_metadata(folder, path)
    if meta and meta["kind"] != kind:
        raise AdapterError(
            f"adapter {path!r} is a {meta['kind']} adapter (llmdoctor.json kind), but kind {kind!r} was requested",
            "kind",
        )
    base = _stated_base(meta, config, path) if expected_base is not None else meta.get("base_model", "")
    if expected_base is not None and not base_model_matches(base, expected_base):
        raise AdapterError(
            f"adapter {path!r} was trained for base model {base!r}, but this server's {kind} "
            f"base model is {expected_base!r}",
            "path",
        )
    manifest = AdapterManifest(
        path=folder,
        kind=kind,
        base_model=base,
        rank=max(ranks),
        lora_alpha=float(config.get("lora_alpha", 8)),  # 8 is peft's LoraConfig default
        target_modules=tuple(sorted(config["target_modules"])),  # peft saves a set: its order varies
        meta=meta,
    )
    return CheckedAdapter(manifest, config, weights)


def read_folder_for_engine(path: str | Path, kind: str, max_rank: int, model_folder: Path) -> CheckedAdapter:
    """What an engine runs before it loads: every check of what the folder holds, on its own disk,
    against its own model's layers, returning the checked bytes to build the adapter from. The base
    model's *name* is the API's policy (inspect_adapter, run by the service and each replica); the
    engine checks what it can serve. `path` was resolved by whoever chose it, so its parent is the root."""
    folder = Path(path).expanduser().resolve()
    shapes = linear_shapes(model_folder) or None  # None: a model without safetensors; no shape check then
    # The folder's own name, relative to its parent as the root: messages never show the server's paths.
    return read_adapter(folder.name, [folder.parent], kind, None, max_rank, shapes)


def resolve_adapter_path(path: str, roots: Sequence[Path]) -> Path:
    """The real (symlink-free) folder `path` names, if it lies inside an adapter root."""
    if not roots:
        raise ForbiddenError(
            "loading adapters is disabled: no adapter root is configured; start the server with "
            "--adapter-root DIR and put adapter folders under DIR",
            "path",
        )
    if not isinstance(path, str) or not path.strip():
        raise AdapterError("path must be a non-empty string naming an adapter folder", "path")
    real_roots = _real_roots(roots)
    given = Path(path)
    candidates = [given] if given.is_absolute() else [root / given for root in real_roots]
    # resolve() follows every symlink and '..' that exists; checking the result, not the text,
    # is what stops both '../' traversal and symlinks that point out of a root.
    inside = [real for real in (_resolve(c, path) for c in candidates) if _is_inside(real, real_roots)]
    if not inside:
        # The roots are the server's business: a client learns only that its path is not under one.
        raise ForbiddenError(
            f"path {path!r} is outside the adapter roots; only folders under an --adapter-root may be loaded "
            "(a relative path is taken relative to each root)",
            "path",
        )
    for real in inside:
        if _exists(real, path):
            if not real.is_dir():
                raise AdapterError(f"path {path!r} is a file; expected an adapter folder", "path")
            return real
    raise NotFoundError(f"path {path!r}: no such adapter folder", "path")


def base_model_matches(stated: str, expected: str) -> bool:
    """Same model name: the last '/'-separated component, case-insensitive (module docstring)."""
    return _model_key(stated) == _model_key(expected)


def validate_adapter_name(name: str) -> str:
    """Return `name` if it is 1-64 characters of [A-Za-z0-9._-] and not only dots.

    Whether it collides with the patient's or another adapter's name is the caller's check.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or set(name) == {"."} or name.startswith("__"):
        raise AdapterError(
            f"adapter name {name!r} is invalid: expected 1-{MAX_NAME_LEN} characters of "
            "letters, digits, '.', '_' or '-' (not only dots, not starting with '__', kept for internal names)",
            "name",
        )
    return name


def write_adapter_metadata(
    folder: Path,
    kind: str,
    base_model: str,
    method: str,
    dimension: str | None = None,
    metrics: dict | None = None,
    weights: str = "lora",
) -> Path:
    """Write `folder/llmdoctor.json` (atomically) with a UTC ISO `created` stamp; return its path.

    DESIGN.md names methods dpo|gdpo|tfpo; any string is recorded (e.g. "sft" for test adapters).
    `weights` is "lora" (a peft adapter) or "full" (a whole model from full fine-tuning).
    """
    _check_kind(kind)
    meta = {
        "kind": kind,
        "base_model": base_model,
        "method": method,
        "dimension": dimension,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics or {},
        "weights": weights,
    }
    target = Path(folder) / METADATA_FILE
    tmp = target.with_name(f".{METADATA_FILE}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, target)  # a reader never sees half a file
    return target


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise AdapterError(f"kind must be one of {list(KINDS)}, got {kind!r}", "kind")


def _real_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(root).expanduser().resolve() for root in roots]


def _resolve(path: Path, given: str | None = None) -> Path:
    """`path` resolved; an AdapterError quoting `given` (the client's own text), never the root it was joined to."""
    try:
        return path.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # NUL bytes, name too long, symlink loops
        shown = given if given is not None else path.name
        raise AdapterError(f"path {shown!r} cannot be resolved: {os_reason(e)}", "path") from e


def _exists(real: Path, given: str) -> bool:
    try:
        return real.exists()
    except OSError as e:  # ENAMETOOLONG and the like: Path.exists raises them on Python 3.11
        raise AdapterError(f"path {given!r} cannot be used: {os_reason(e)}", "path") from e


def os_reason(error: BaseException) -> str:
    """What went wrong, without the absolute path an OSError's text carries (it would show the root)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def _is_inside(real: Path, real_roots: list[Path]) -> bool:
    return any(real.is_relative_to(root) for root in real_roots)


def _check_files(folder: Path, path: str, real_roots: list[Path]) -> None:
    """Required files present as regular files; nothing in the folder links out of the roots."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:  # e.g. no read permission for the server's user
        raise AdapterError(f"adapter {path!r}: cannot list the folder: {os_reason(e)}", "path") from e
    names = [entry.name for entry in entries]
    if "config.json" in names and not (folder / WEIGHTS_FILE).is_file():
        raise AdapterError(
            f"adapter {path!r} is a full model folder (config.json, no {WEIGHTS_FILE}; e.g. trained with "
            "alignment.use_lora: false or written by llmdoctor merge), not an adapter: serve it with "
            f"`llmdoctor serve --model {path}`",
            "path",
        )
    # Loaders (peft, vLLM) read top-level files only; any of them may be read, so check them all.
    for entry in entries:
        if not _is_inside(_resolve(entry), real_roots):
            raise ForbiddenError(f"adapter {path!r}: {entry.name!r} is a link to outside the adapter roots", "path")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise AdapterError(
                f"adapter {path!r} has pickle weights {pickles} but no {WEIGHTS_FILE}: pickles are "
                "refused (they can run code); save with safetensors (peft save_pretrained default)",
                "path",
            )
        raise AdapterError(f"adapter {path!r} has no {WEIGHTS_FILE}; the folder holds {_listing(names)}", "path")
    if not (folder / CONFIG_FILE).is_file():
        raise AdapterError(f"adapter {path!r} has no {CONFIG_FILE}; the folder holds {_listing(names)}", "path")


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "nothing"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read_json(file: Path, path: str) -> dict:
    """A JSON object from `file`; AdapterError naming the file otherwise."""
    try:
        if file.stat().st_size > MAX_JSON_BYTES:
            raise AdapterError(f"adapter {path!r}: {file.name} is larger than {MAX_JSON_BYTES} bytes", "path")
        data = file.read_bytes()
    except OSError as e:
        raise AdapterError(f"adapter {path!r}: cannot read {file.name}: {os_reason(e)}", "path") from e
    return _parse_json(data, file.name, path)


def _parse_json(data: bytes, file_name: str, path: str) -> dict:
    try:
        parsed = json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError is a ValueError
        raise AdapterError(f"adapter {path!r}: {file_name} is not valid JSON: {e}", "path") from e
    if not isinstance(parsed, dict):
        raise AdapterError(f"adapter {path!r}: {file_name} must hold a JSON object", "path")
    return parsed


def _read_metadata(folder: Path, path: str) -> dict:
    """llmdoctor.json checked for the fields the server relies on, or {} when there is none."""
    file = folder / METADATA_FILE
    if not file.is_file():
        return {}
    meta = _read_json(file, path)
    if meta.get("kind") not in KINDS:
        raise AdapterError(
            f"adapter {path!r}: {METADATA_FILE} kind must be one of {list(KINDS)}, got {meta.get('kind')!r}",
            "path",
        )
    if not isinstance(meta.get("base_model"), str) or not meta["base_model"]:
        raise AdapterError(f"adapter {path!r}: {METADATA_FILE} needs a base_model name", "path")
    return meta


def _stated_base(meta: dict, config: dict, path: str) -> str:
    """llmdoctor.json's base_model, else adapter_config.json's base_model_name_or_path."""
    if meta:
        return meta["base_model"]
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise AdapterError(
            f"adapter {path!r} does not say which base model it was trained for: set "
            f"base_model_name_or_path in {CONFIG_FILE} or add {METADATA_FILE}",
            "path",
        )
    # peft records the folder it trained on; for our converted cache folder that is a path whose
    # last part carries a fingerprint, so use the name the folder was converted under.
    return converted_model_name(base) or base


def _model_key(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].casefold()
