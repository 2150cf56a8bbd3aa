"""One engine replica of the replicated server: a Ray Serve deployment holding one engine.

The gateway (gateway.py) runs the HTTP API and calls `generate` here through a deployment handle;
requests arrive as the engine protocol's plain messages (token ids in, token events out), so the
API, tokenization and stop strings stay in one place and replicas only decode.

- Doctors: the replica follows the registry's adapter set (registry.py): it loads the whole set
  in its constructor, before Serve routes anything to it, then applies each change and acks it.
- Patient adapters: Serve's model multiplexing. The gateway routes with
  `multiplexed_model_id="name@generation"`; `_patient` loads that adapter into this engine on first
  use (an LRU of `--max-loras` per replica; an evicted one is unloaded) and Serve prefers replicas
  that already hold it.
- Health: Serve calls `check_health`; a replica whose engine loop died is restarted.
- Every replica checks each adapter folder for itself, on its own disk, before it loads it (the
  API's folder checks with this deployment's settings, then the engine's checks of the very bytes
  it loads), a replica that starts later included. A folder that fails here is reported (the ack's
  failures, the heartbeat's `adapter_failures`) and requests naming it get an error from this
  replica, never another adapter or none.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import serve

from llmdoctor.server.adapter_folders import inspect_adapter
from llmdoctor.server.engine.protocol import AdapterInfo, GenerateRequest
from llmdoctor.server.errors import EngineDeadError, NotFoundError
from llmdoctor.server.replicas.registry import HEARTBEAT_SECONDS, Snapshot, get_registry

logger = logging.getLogger(__name__)
CHANGE_POLL_SECONDS = 30.0


class LoadedPatient:
    """What the multiplexing cache holds; Serve awaits `__del__` when it evicts the adapter."""

    def __init__(self, replica: EngineReplica, model_id: str):
        self.replica, self.model_id = replica, model_id

    async def __del__(self):
        await self.replica.unload_quietly(self.model_id)


class EngineReplica:
    async def __init__(self, settings: dict[str, Any], app: str, replica_prefix: str, threads: int | None = None):
        from llmdoctor.server.api.engine_factory import build_engine
        from llmdoctor.server.config import ServerSettings

        if threads:
            import torch

            torch.set_num_threads(threads)  # this replica's share of the CPU cores
        self.settings = ServerSettings(**settings)
        self.replica_id = serve.get_replica_context().replica_id.to_full_id_str()
        self.registry = get_registry(app, replica_prefix)
        self.engine = await asyncio.to_thread(build_engine, self.settings)
        await self.engine.start()
        self.doctors: dict[str, int] = {}  # loaded doctor -> generation
        self.failures: dict[str, str] = {}  # adapter (doctor name or patient model id) -> why this replica refused it
        self.snapshot = Snapshot(-1)
        await self._apply(await self.registry.snapshot.remote())  # the current set, before any traffic
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._heartbeat())]
        logger.info("replica %s ready (pid %d)", self.replica_id, os.getpid())

    # ---- requests

    async def generate(self, request: GenerateRequest):
        """The engine's token events for one request (a streaming handle call)."""
        self._refuse_failed(request)
        if request.adapter:
            await self._patient(serve.get_multiplexed_model_id())
        async for event in self.engine.generate(request):
            yield event

    async def load_patient(self, model_id: str) -> dict[str, Any]:
        """Load (through the multiplexing cache) and describe a patient adapter: the gateway's check
        that a new adapter works before it reports the load done."""
        await self._patient(model_id)
        return next(asdict(a) for a in self.engine.adapters() if a.name == model_id)

    def info(self) -> dict[str, Any]:
        e = self.engine
        return {"model_name": e.model_name, "doctor_base_name": e.doctor_base_name, "max_model_len": e.max_model_len,
                "eos_token_ids": list(e.eos_token_ids)}

    def check_health(self) -> None:
        if not self.engine.healthy:
            raise RuntimeError("the engine loop is not running")

    # ---- patient adapters (multiplexed)

    async def _patient(self, model_id: str) -> LoadedPatient:
        raise NotImplementedError  # replica_class() defines it with the deployment's --max-loras

    async def _load_patient(self, model_id: str) -> LoadedPatient:
        entry = await self._entry(model_id)
        if any(a.name == model_id for a in self.engine.adapters()):
            return LoadedPatient(self, model_id)
        await self._load_checked(model_id, entry.path, "patient")
        return LoadedPatient(self, model_id)

    async def _load_checked(self, name: str, path: str, kind: str) -> AdapterInfo:
        """Check the folder on this replica's disk, then load it; a failure is recorded and re-raised."""
        try:
            folder = Path(path)
            expected = self.engine.model_name if kind == "patient" else self.engine.doctor_base_name
            await asyncio.to_thread(inspect_adapter, str(folder), [folder.parent], kind, expected,
                                    self.settings.max_lora_rank)
            info = await self.engine.load_adapter(name, path, kind)
        except Exception as exc:
            self.failures[name] = getattr(exc, "message", None) or str(exc)
            logger.warning("replica %s refused adapter %s at %s: %s", self.replica_id, name, path, self.failures[name])
            raise
        self.failures.pop(name, None)
        return info

    def _refuse_failed(self, request: GenerateRequest) -> None:
        """A request naming an adapter this replica refused gets that reason, not some other output."""
        names = [d.name for d in request.guidance.doctors if d.beta != 0.0]
        failed = [n for n in names if n in self.failures and n not in self.doctors]
        if failed:
            raise EngineDeadError(f"replica {self.replica_id} could not load doctor '{failed[0]}': "
                                  f"{self.failures[failed[0]]}")

    async def _entry(self, model_id: str):
        name = model_id.rpartition("@")[0]
        entry = self.snapshot.adapters.get(name)
        if entry is None or entry.model_id != model_id:  # newer than what this replica followed so far
            entry = (await self.registry.snapshot.remote()).adapters.get(name)
        if entry is None or entry.model_id != model_id:
            raise NotFoundError(f"patient adapter {name!r} is not loaded", "model")
        return entry

    async def unload_quietly(self, name: str) -> None:
        try:
            await self.engine.unload_adapter(name)
        except NotFoundError:
            pass

    # ---- following the adapter set

    async def _follow(self) -> None:
        while True:
            try:
                snapshot = await self.registry.wait_change.remote(self.snapshot.version, CHANGE_POLL_SECONDS)
                if snapshot is not None:
                    await self._apply(snapshot)
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry restarting: try again shortly
                logger.exception("replica %s: following the adapter set failed; retrying", self.replica_id)
                await asyncio.sleep(1.0)

    async def _apply(self, snapshot: Snapshot) -> None:
        """Make this engine hold the snapshot's doctors (and drop removed patient adapters); ack it."""
        failures: dict[str, str] = {}
        infos: dict[str, dict] = {}
        wanted = {n: e for n, e in snapshot.adapters.items() if e.kind == "doctor"}
        for name, generation in list(self.doctors.items()):
            if name not in wanted or wanted[name].generation != generation:
                await self.unload_quietly(name)  # waits for the requests using it
                del self.doctors[name]
        for name, entry in wanted.items():
            if name in self.doctors:
                continue
            try:
                info = await self._load_checked(name, entry.path, "doctor")
                self.doctors[name] = entry.generation
                infos[name] = asdict(info)
            except Exception:  # reported to the gateway, which refuses the load, and in every heartbeat
                failures[name] = self.failures[name]
        patients = {e.model_id for e in snapshot.adapters.values() if e.kind == "patient"}
        for name in set(self.failures) - set(wanted) - patients:  # forget refusals of adapters now gone
            del self.failures[name]
        for adapter in self.engine.adapters():
            if adapter.kind == "patient" and adapter.name not in patients:
                await self.unload_quietly(adapter.name)
        self.snapshot = snapshot
        await self.registry.ack.remote(self.replica_id, snapshot.version, failures, infos)

    async def _heartbeat(self) -> None:
        while True:
            stats = self.engine.stats()
            await self.registry.heartbeat.remote(self.replica_id, {
                "healthy": self.engine.healthy, "pid": os.getpid(), "running": stats.running,
                "waiting": stats.waiting, "steps": stats.steps, "generated_tokens": stats.generated_tokens,
                "adapters": sorted(a.name for a in self.engine.adapters()),
                "adapter_failures": dict(self.failures)})
            await asyncio.sleep(HEARTBEAT_SECONDS)


def replica_class(max_loras: int) -> type[EngineReplica]:
    """EngineReplica whose multiplexing cache holds `max_loras` patient adapters (the decorator
    takes its size at class definition)."""

    class Replica(EngineReplica):
        @serve.multiplexed(max_num_models_per_replica=max_loras)
        async def _patient(self, model_id: str) -> LoadedPatient:
            return await self._load_patient(model_id)

    Replica.__name__ = Replica.__qualname__ = "EngineReplica"
    return Replica
