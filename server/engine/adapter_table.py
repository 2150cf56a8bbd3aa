"""Which adapters an engine holds, and which requests still use them.

An unload while requests use the adapter hides it from new requests at once and frees it when
the last such request finishes ("in-flight requests finish on what they started with").
Thread-safe: the event loop pins and lists, the engine thread loads and frees.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

from llmdoctor.server.engine.protocol import AdapterInfo, AdapterKind, GenerateRequest
from llmdoctor.server.errors import ConflictError, NotFoundError


class AdapterTable:
    def __init__(self, reserved_names: tuple[str, ...] = ()):
        self._lock = threading.Lock()
        self._live: dict[str, AdapterInfo] = {}
        self._leaving: dict[str, AdapterInfo] = {}  # unloaded but still used by requests
        self._pins: Counter[str] = Counter()
        self._reserved = set(reserved_names)

    def check_free(self, name: str) -> None:
        with self._lock:
            if name in self._reserved or name in self._live or name in self._leaving:
                raise ConflictError(f"the name '{name}' is already in use; unload it first or pick another", "name")

    def add(self, info: AdapterInfo) -> None:
        with self._lock:
            self._live[info.name] = info

    def list(self) -> list[AdapterInfo]:
        with self._lock:
            return list(self._live.values())

    def get(self, name: str, kind: AdapterKind, param: str) -> AdapterInfo:
        with self._lock:
            return self._get(name, kind, param)

    def _get(self, name: str, kind: AdapterKind, param: str) -> AdapterInfo:
        info = self._live.get(name)
        if info is None or info.kind != kind:
            known = sorted(n for n, i in self._live.items() if i.kind == kind)
            raise NotFoundError(f"no {kind} adapter named '{name}' is loaded; loaded {kind}s: {known}", param)
        return info

    def pin(self, wanted: list[tuple[str, AdapterKind, str]]) -> None:
        """Check every (name, kind, param) is live and count one more user for each, atomically."""
        with self._lock:
            for name, kind, param in wanted:
                self._get(name, kind, param)
            self._pins.update(name for name, _, _ in wanted)

    def unpin(self, names: list[str]) -> list[str]:
        """One user fewer for each; returns the leaving adapters nobody uses any more (to free now)."""
        with self._lock:
            self._pins.subtract(names)
            free = [n for n in names if n in self._leaving and self._pins[n] <= 0]
            for n in free:
                del self._leaving[n]
            return free

    def retire(self, name: str) -> bool:
        """Hide `name` from new requests. True when nobody uses it (free it now)."""
        with self._lock:
            info = self._live.pop(name, None)
            if info is None:
                raise NotFoundError(f"no adapter named '{name}' is loaded; loaded: {sorted(self._live)}", "name")
            if self._pins[name] > 0:
                self._leaving[name] = info
                return False
            return True

    def users(self, name: str) -> int:
        with self._lock:
            return max(self._pins[name], 0)


def wanted_adapters(request: GenerateRequest) -> list[tuple[str, AdapterKind, str]]:
    """(name, kind, API field) of every adapter a request uses: what to pin while it runs."""
    wanted: list[tuple[str, AdapterKind, str]] = []
    if request.adapter:
        wanted.append((request.adapter, "patient", "model"))
    for i, d in enumerate(request.guidance.doctors):
        if d.beta != 0.0:
            wanted.append((d.name, "doctor", f"guidance.doctors[{i}].name"))
    return wanted


def adapter_facts(path: Path) -> tuple[int, dict]:
    """(rank, llmdoctor.json contents) of an adapter folder."""
    rank = int(json.loads((path / "adapter_config.json").read_text()).get("r", 0))
    meta_file = path / "llmdoctor.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return rank, meta
