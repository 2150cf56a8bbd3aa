"""Hot-load, list and unload LoRA adapters: check the folder first, then hand it to the engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llmdoctor.server.adapter_folders import inspect_adapter, validate_adapter_name
from llmdoctor.server.api.protocol_adapters import AdapterCard, AdapterDeleted, AdapterList
from llmdoctor.server.engine.protocol import AdapterKind, Engine


class AdaptersService:
    def __init__(self, engine: Engine, roots: list[Path], max_rank: int):
        self.engine = engine
        self.roots = list(roots)
        self.max_rank = max_rank

    async def load(self, name: str, path: str, kind: AdapterKind) -> AdapterCard:
        """POST /v1/adapters: only folders under an --adapter-root (ForbiddenError otherwise)."""
        return await self._load(name, path, kind, self.roots)

    async def load_trusted(self, name: str, path: Path, kind: AdapterKind) -> AdapterCard:
        """--doctor / --lora at start: the operator named the folder, so its own parent is the root."""
        folder = Path(path).expanduser().resolve()
        return await self._load(name, str(folder), kind, [folder.parent])

    def check_trusted(self, name: str, path: Path, kind: AdapterKind) -> None:
        """What load_trusted checks, without loading: lets the CLI refuse a bad flag before serving."""
        validate_adapter_name(name)
        folder = Path(path).expanduser().resolve()
        inspect_adapter(str(folder), [folder.parent], kind, self._expected_base(kind), self.max_rank)

    def list(self) -> AdapterList:
        adapters = sorted(self.engine.adapters(), key=lambda a: (a.kind, a.name))
        return AdapterList(data=[AdapterCard.of(a) for a in adapters])

    async def unload(self, name: str) -> AdapterDeleted:
        """In-flight requests keep the adapter until they finish; new ones cannot name it."""
        await self.engine.unload_adapter(name)
        return AdapterDeleted(name=name)

    async def _load(self, name: str, path: str, kind: AdapterKind, roots: list[Path]) -> AdapterCard:
        validate_adapter_name(name)
        # Reads JSON and safetensors headers: off the event loop, it touches the disk.
        manifest = await asyncio.to_thread(inspect_adapter, path, roots, kind, self._expected_base(kind), self.max_rank)
        info = await self.engine.load_adapter(name, str(manifest.path), kind)
        return AdapterCard.of(info)

    def _expected_base(self, kind: AdapterKind) -> str:
        if kind == "doctor":
            return self.engine.doctor_base_name
        return self.engine.model_name
