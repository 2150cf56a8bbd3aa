"""The gateway's engine: the `Engine` interface over N engine replicas on Ray Serve.

The FastAPI app and its services run unchanged on top of it (gateway.py); only token-level work
crosses to the replicas, through a deployment handle whose router spreads the load.

- generate: a streaming handle call; a patient adapter routes by `multiplexed_model_id`, so Serve
  prefers a replica that already holds it. A replica that dies before this request has shown the
  client anything is retried once (a streamed request: before its first event; a non-streamed one:
  any time, its events are held back until the end); after that the request ends with an error
  event, never a hang.
- adapters: loads and unloads go through the registry (registry.py) and return once every live
  replica holds the new set; `adapters()` answers from the registry's committed set.
- replicas(): each replica's health and load, for /health and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmdoctor.server.engine.protocol import AdapterInfo, AdapterKind, EngineStats, GenerateRequest, TokenEvent
from llmdoctor.server.errors import AdapterError, ConflictError, EngineDeadError, LLMDoctorError, NotFoundError
from llmdoctor.server.replicas.registry import HEARTBEAT_SECONDS, Snapshot

logger = logging.getLogger(__name__)
ADAPTER_SYNC_TIMEOUT = 300.0  # a replica that is still starting loads the model first


class ReplicatedEngine:
    def __init__(self, handle, registry, model_folder: Path, max_batch: int, max_queue: int):
        self._handle = handle
        self._registry = registry
        self.model_folder = model_folder  # the gateway tokenizes; the replicas resolve the same model
        self._max_batch, self._max_queue = max_batch, max_queue
        self._snapshot = Snapshot(-1)
        self._replicas: list[dict[str, Any]] = []
        self._streams: dict[str, Any] = {}  # request id -> its handle stream, for abort
        self._aborted: set[str] = set()
        self._refresher: asyncio.Task | None = None
        self._running = False

    # ---- lifecycle

    async def start(self) -> None:
        info = await self._handle.info.remote()
        self.model_name = info["model_name"]
        self.doctor_base_name = info["doctor_base_name"]
        self.max_model_len = info["max_model_len"]
        self.eos_token_ids = tuple(info["eos_token_ids"])
        await self._refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())
        self._running = True

    async def shutdown(self, grace_seconds: float = 10.0) -> None:
        self._running = False
        if self._refresher:
            self._refresher.cancel()

    @property
    def healthy(self) -> bool:
        return self._running and any(r.get("healthy") for r in self._replicas)

    # ---- requests

    async def generate(self, request: GenerateRequest):
        model_id = self._patient_model_id(request.adapter)
        routed = replace(request, adapter=model_id)
        options = {"stream": True, "multiplexed_model_id": model_id or ""}
        try:
            for attempt in (1, 2):
                stream = self._handle.options(**options).generate.remote(routed)
                self._streams[request.request_id] = stream
                held: list[TokenEvent] = []  # a non-streamed request's events, until it ends
                shown = False
                try:
                    async for event in stream:
                        if request.streamed:
                            shown = True
                            yield event
                        else:
                            held.append(event)
                    for event in held:
                        yield event
                    return
                except Exception as exc:
                    cause = _cause(exc)
                    if isinstance(cause, LLMDoctorError):
                        raise cause from None  # the engine refused it (queue full, bad request), as in-process
                    if request.request_id in self._aborted:
                        yield TokenEvent(request.request_id, (), finish_reason="abort")
                        return
                    if shown or attempt == 2 or not _replica_failure(exc):
                        logger.error("request %s failed on its replica: %r", request.request_id, exc)
                        yield TokenEvent(request.request_id, (), finish_reason="abort",
                                         error=f"the engine replica serving this request failed ({type(exc).__name__})"
                                         + ("; it had been retried once" if attempt == 2 else ""))
                        return
                    logger.warning("replica failed before request %s showed anything (%s); retrying it once",
                                   request.request_id, type(exc).__name__)
                finally:
                    self._streams.pop(request.request_id, None)
                    stream.cancel()  # a no-op once finished; frees the replica's slot when the client left
        finally:
            self._aborted.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            self._aborted.add(request_id)
            stream.cancel()

    def _patient_model_id(self, name: str | None) -> str | None:
        if name is None:
            return None
        entry = self._snapshot.adapters.get(name)
        if entry is None or entry.kind != "patient" or not entry.committed:
            raise NotFoundError(f"The model `{name}` does not exist", "model")
        return entry.model_id

    # ---- adapters

    async def load_adapter(self, name: str, path: str, kind: AdapterKind) -> AdapterInfo:
        try:
            version, generation = await self._registry.propose.remote(name, kind, path)
        except Exception as exc:
            if isinstance(_cause(exc), KeyError):
                raise ConflictError(f"an adapter named '{name}' is already loaded; unload it first", "name") from None
            raise
        try:
            if kind == "patient":  # one replica checks it now; the others load it when routed to
                model_id = f"{name}@{generation}"
                info = await self._handle.options(multiplexed_model_id=model_id).load_patient.remote(model_id)
            else:
                info = await self._wait_for_replicas(version, name)
        except BaseException as exc:
            await self._registry.remove.remote(name)
            cause = _cause(exc)
            if isinstance(cause, LLMDoctorError):
                raise cause from None
            raise
        info = {**info, "name": name}
        await self._registry.commit.remote(name, info)
        await self._refresh()
        return AdapterInfo(**info)

    async def unload_adapter(self, name: str) -> None:
        if name not in self._snapshot.adapters:
            await self._refresh()
        if name not in self._snapshot.adapters:
            raise NotFoundError(f"no adapter named '{name}' is loaded", "name")
        try:
            version = await self._registry.unload.remote(name)
        except Exception as exc:
            cause = _cause(exc)
            if isinstance(cause, KeyError):
                raise NotFoundError(f"no adapter named '{name}' is loaded", "name") from None
            if isinstance(cause, ValueError):
                raise ConflictError(f"adapter '{name}' is being loaded right now; retry when that finishes",
                                    "name") from None
            raise
        await self._refresh()  # new requests cannot name it from here on
        await self._wait_for_replicas(version, None)  # each replica unloads it once its requests end

    async def _wait_for_replicas(self, version: int, name: str | None) -> dict[str, Any]:
        result = await self._registry.wait_acks.remote(version, ADAPTER_SYNC_TIMEOUT)
        if name is not None:
            failed = [f[name] for f in result["failures"].values() if name in f]
            if failed:
                raise AdapterError(f"adapter '{name}' failed to load on a replica: {failed[0]}", "path")
        if result["missing"]:
            raise EngineDeadError(f"{len(result['missing'])} of {result['replicas']} replicas did not apply the "
                                  f"adapter change within {ADAPTER_SYNC_TIMEOUT:.0f} s")
        if name is None:
            return {}
        snapshot: Snapshot = await self._registry.snapshot.remote()
        info = snapshot.adapters[name].info
        if info is None:
            raise EngineDeadError("no replica is running to load the adapter")
        return info

    def adapters(self) -> list[AdapterInfo]:
        return [AdapterInfo(**{**e.info, "name": n}) for n, e in self._snapshot.adapters.items()
                if e.committed and e.info]

    # ---- state

    def stats(self) -> EngineStats:
        live = [r for r in self._replicas if r.get("healthy")]
        return EngineStats(
            running=sum(r.get("running", 0) for r in live), waiting=sum(r.get("waiting", 0) for r in live),
            max_batch=self._max_batch * max(1, len(live)), max_queue=self._max_queue * max(1, len(live)),
            steps=sum(r.get("steps", 0) for r in live), generated_tokens=sum(r.get("generated_tokens", 0) for r in live))

    def replicas(self) -> list[dict[str, Any]]:
        """Each live replica: id, healthy, seconds since its last report, running, waiting, ..."""
        return list(self._replicas)

    async def _refresh(self) -> None:
        self._snapshot = await self._registry.snapshot.remote()
        replicas = await self._registry.replicas.remote()
        for r in replicas:  # a replica silent for 5 heartbeats is not serving, whatever it last said
            r["healthy"] = bool(r.get("healthy")) and r["age"] is not None and r["age"] < 5 * HEARTBEAT_SECONDS
        self._replicas = replicas

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._refresh()
            except Exception:
                logger.exception("reading the replica registry failed")


def _cause(exc: BaseException) -> BaseException:
    """The replica's own exception inside Ray's wrapper (RayTaskError.cause), else `exc`."""
    return getattr(exc, "cause", None) or exc


def _replica_failure(exc: BaseException) -> bool:
    """A dead or unreachable replica (as opposed to an error in the request itself)."""
    from ray import exceptions as ray_errors

    return isinstance(exc, ray_errors.RayActorError | ray_errors.ActorUnavailableError)
