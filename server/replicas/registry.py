"""The replicated server's shared state, in one named Ray actor: the adapter set and the replicas.

Adapters. Every change (a load or an unload, doctor or patient) makes a new `version` of the set.
Each engine replica follows the set (a long poll on `wait_change`), applies it to its engine and
acks the version it reached, with any load failures. A doctor is `committed` (requests may name
it) only once every live replica acked a version that holds it, so a request never meets a
replica without it; a replica that starts later loads the whole set in its constructor, before
Serve routes anything to it. Patient adapters are committed after one replica loaded them; the
others load them on demand through Serve's model multiplexing, under the id `name@generation`
(a reloaded name gets a new generation, so no replica serves a stale copy from its cache).

Replicas. Live = Serve's replica actors that exist now (named actors, which need no dashboard);
each reports its engine's stats every second (`heartbeat`), which /health and /metrics show.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

REGISTRY_NAMESPACE = "llmdoctor"
HEARTBEAT_SECONDS = 1.0


@dataclass
class AdapterEntry:
    name: str
    kind: str  # "patient" | "doctor"
    path: str
    generation: int
    committed: bool = False
    info: dict[str, Any] | None = None  # AdapterInfo fields, from the first replica that loaded it

    @property
    def model_id(self) -> str:
        """The multiplexed model id / the engine's name for a patient adapter."""
        return f"{self.name}@{self.generation}"


@dataclass
class Snapshot:
    version: int
    adapters: dict[str, AdapterEntry] = field(default_factory=dict)


class AdapterRegistry:
    """A Ray actor (async): see the module docstring."""

    def __init__(self, replica_prefix: str):
        self.replica_prefix = replica_prefix  # "SERVE_REPLICA::APP#EngineReplica#"
        self.version = 0
        self.generation = 0
        self.adapters: dict[str, AdapterEntry] = {}
        self.acks: dict[str, tuple[int, dict[str, str]]] = {}  # replica -> (version, failures by name)
        self.heartbeats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._changed = asyncio.Condition()

    # ---- the adapter set

    def snapshot(self) -> Snapshot:
        return Snapshot(self.version, {n: AdapterEntry(**asdict(e)) for n, e in self.adapters.items()})

    async def propose(self, name: str, kind: str, path: str) -> tuple[int, int]:
        """Add an uncommitted adapter; returns (version, generation). Raises KeyError if the name is taken."""
        if name in self.adapters:
            raise KeyError(name)
        self.generation += 1
        self.adapters[name] = AdapterEntry(name, kind, path, self.generation)
        return await self._bump(), self.generation

    async def remove(self, name: str) -> int:
        self.adapters.pop(name, None)
        return await self._bump()

    async def unload(self, name: str) -> int:
        """Remove a committed adapter. Raises KeyError if there is none of that name, ValueError while
        its load is still in progress (that load's own failure path removes it, or it commits)."""
        if not self.adapters[name].committed:
            raise ValueError(name)
        return await self.remove(name)

    def commit(self, name: str, info: dict[str, Any] | None) -> None:
        entry = self.adapters[name]
        entry.committed = True
        entry.info = entry.info or info

    async def wait_change(self, after: int, timeout: float) -> Snapshot | None:
        """The set once its version is past `after`, or None after `timeout` seconds."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > after), timeout)
            except TimeoutError:
                return None
        return self.snapshot()

    async def _bump(self) -> int:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()
        return self.version

    # ---- replicas

    async def ack(self, replica: str, version: int, failures: dict[str, str], infos: dict[str, dict]) -> None:
        self.acks[replica] = (version, failures)
        for name, info in infos.items():
            if name in self.adapters and self.adapters[name].info is None:
                self.adapters[name].info = info
        async with self._changed:
            self._changed.notify_all()

    async def wait_acks(self, version: int, timeout: float) -> dict[str, Any]:
        """Wait until every live replica acked `version` (or a later one). Returns
        {"failures": {replica: message}, "missing": [replicas that did not ack in time]}."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                live = self.live_replicas()
                missing = [r for r in live if self.acks.get(r, (-1, {}))[0] < version]
                if not missing or time.monotonic() >= deadline:
                    break
                try:  # woken by an ack; re-read the live set at least every second (a replica may die)
                    await asyncio.wait_for(self._changed.wait(), min(1.0, deadline - time.monotonic()))
                except TimeoutError:
                    pass
        failures = {r: self.acks[r][1] for r in live if r in self.acks and self.acks[r][1]}
        return {"failures": failures, "missing": missing, "replicas": len(live)}

    def heartbeat(self, replica: str, stats: dict[str, Any]) -> None:
        self.heartbeats[replica] = (time.time(), stats)

    def replicas(self) -> list[dict[str, Any]]:
        """Each live replica: its id, seconds since its last heartbeat (None: still starting), its stats."""
        now, out = time.time(), []
        live = self.live_replicas()
        for replica in live:
            seen, stats = self.heartbeats.get(replica, (None, {}))
            out.append({"replica": replica.removeprefix(self.replica_prefix),
                        "age": None if seen is None else now - seen, **stats})
        for gone in set(self.heartbeats) - set(live):
            self.heartbeats.pop(gone, None)
            self.acks.pop(gone, None)
        return out

    def live_replicas(self) -> list[str]:
        import ray

        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        return sorted(n for n in names if n.startswith(self.replica_prefix))


def registry_name(app: str) -> str:
    return f"{app}-registry"


def get_registry(app: str, replica_prefix: str):
    """The app's registry actor, created by whoever asks first (detached: a Serve app outlives the
    process that deployed it; `llmdoctor serve` kills it on exit)."""
    import ray

    actor = ray.remote(num_cpus=0)(AdapterRegistry)
    return actor.options(name=registry_name(app), namespace=REGISTRY_NAMESPACE, lifetime="detached",
                         get_if_exists=True).remote(replica_prefix)
