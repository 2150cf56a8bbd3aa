"""Which adapters an engine holds, and which requests still use them.

An unload while requests use the adapter hides it from new requests at once and frees it when
the last such request finishes ("in-flight requests finish on what they started with").
A load or unload holds its name (`claim`) until it is done, and so does the freeing of a leaving
adapter: a second load or unload of that name meanwhile is a ConflictError (409), so changes to
one name never interleave. Thread-safe: the event loop pins and lists, the engine thread frees.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from llmdoctor.server.engine.protocol import AdapterInfo, AdapterKind, GenerateRequest
from llmdoctor.server.errors import ConflictError, NotFoundError


class AdapterTable:
    def __init__(self, reserved_names: tuple[str, ...] = ()):
        self._lock = threading.Lock()
        self._live: dict[str, AdapterInfo] = {}
        self._leaving: dict[str, AdapterInfo] = {}  # unloaded but still used by requests
        self._pins: Counter[str] = Counter()
        self._reserved = set(reserved_names)
        self._busy: set[str] = set()  # names a load, unload or free is working on

    @contextmanager
    def claim(self, name: str) -> Iterator[None]:
        """Hold `name` for one load or unload; ConflictError if another one holds it now."""
        self._take(name)
        try:
            yield
        finally:
            self.done(name)

    def _take(self, name: str) -> None:
        with self._lock:
            if name in self._busy:
                raise ConflictError(f"adapter '{name}' is being loaded or unloaded right now; retry when that "
                                    "finishes", "name")
            self._busy.add(name)

    def done(self, name: str) -> None:
        """Let go of a name held by `claim` or handed out by `unpin`."""
        with self._lock:
            self._busy.discard(name)

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
        """One user fewer for each; returns the leaving adapters nobody uses any more. The caller frees
        each and then calls `done(name)`: until then the name stays held (a load of it gets 409)."""
        with self._lock:
            self._pins.subtract(names)
            free = [n for n in dict.fromkeys(names) if n in self._leaving and self._pins[n] <= 0]
            for n in free:
                del self._leaving[n]
                self._busy.add(n)
            return free

    def retire(self, name: str) -> AdapterInfo | None:
        """Hide `name` from new requests. Returns its info when nobody uses it (free it now), else None
        (the last user's `unpin` hands it out)."""
        with self._lock:
            info = self._live.pop(name, None)
            if info is None:
                raise NotFoundError(f"no adapter named '{name}' is loaded; loaded: {sorted(self._live)}", "name")
            if self._pins[name] > 0:
                self._leaving[name] = info
                return None
            return info

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
