"""The held-out rows of a k-fold run, answered through the engine and the chat / completions services the HTTP
API uses (server/api/app.build_services): a row gets exactly the answer a client sending it would get.

    FoldAnswerer        the engine, the doctors and the services; loads a fold's adapter, answers rows, unloads it
    LocalFoldPredictor  one FoldAnswerer in this process (predict.replicas 1)
    RayFoldPredictor    predict.replicas FoldAnswerers as Ray actors, placed as `serve --replicas` places engine
                        replicas (one GPU each where the cluster has GPUs); each fold's adapter reaches every
                        replica by its path, as the replicated server's patient adapters do, and the rows are
                        dealt out among them

The engines and the doctors load once for the run; each fold's adapter is hot-loaded as a patient adapter (as
POST /v1/adapters does) and unloaded when the fold is predicted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from llmdoctor.server.model_store import EMBEDDED
from llmdoctor.training.kfold import PATIENT, SFT, Answer
from llmdoctor.training.kfold_config import KfoldConfig
from llmdoctor.training.sft_data import SftRow

logger = logging.getLogger(__name__)


class FoldAnswerer:
    """Async throughout: in a Ray actor its methods run on the actor's event loop, where the engine's step
    loop lives too."""

    def __init__(self, config: KfoldConfig, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)  # a local Ray's replicas share this machine's cores
        self.config = config
        self.services = None

    async def start(self) -> None:
        if self.services is not None:
            return
        from llmdoctor.server.api.app import build_services, load_startup_adapters
        from llmdoctor.server.api.engine_factory import build_engine
        from llmdoctor.server.api.metrics import ServerMetrics

        settings = engine_settings(self.config)
        engine = await asyncio.to_thread(build_engine, settings)
        await engine.start()
        self.services = await build_services(engine, settings, ServerMetrics())
        await load_startup_adapters(self.services.adapters, settings)
        self._check_guided_doctors()
        await self._warm_up()

    async def _warm_up(self) -> None:
        """One short answer from the bare patient and from each guided setting before any fold. The model's
        weights are mapped from its file and become resident at their first use (~0.5 GB on the embedded
        model): without this, fold 1 trained before they were and its peak looked that much lower than the
        other folds'."""
        row = SftRow(index=-1, prompt="Hello", response="")
        gate = asyncio.Semaphore(self.config.predict.concurrency)
        settings = [(PATIENT, None), *((name, g.model_dump()) for name, g in self.config.compare.guided.items())]
        await asyncio.gather(*(self._one(gate, -1, setting, None, guidance, row) for setting, guidance in settings))

    def _check_guided_doctors(self) -> None:
        """Every doctor a guided setting names is loaded: found before any fold trains, not as failed rows."""
        from llmdoctor.training.config import ConfigError

        loaded = sorted(a.name for a in self.services.engine.adapters() if a.kind == "doctor")
        for setting, guided in self.config.compare.guided.items():
            for i, doctor in enumerate(guided.doctors):
                if doctor.name not in loaded:
                    raise ConfigError(f"compare.guided.{setting}.doctors.{i}.name: no doctor {doctor.name!r} is "
                                      f"loaded; loaded: {', '.join(loaded) or 'none'} (compare.doctors, "
                                      "compare.default_doctors)", field=f"compare.guided.{setting}.doctors.{i}.name")

    async def load(self, name: str, adapter: str) -> None:
        await self.start()
        await self.services.adapters.load_trusted(name, Path(adapter), "patient")

    async def unload(self, name: str) -> None:
        await self.services.adapters.unload(name)

    async def answer(self, fold: int, name: str, rows: list[SftRow]) -> list[Answer]:
        """Every compared setting's answer to every row: the fold's adapter (loaded as `name`), the bare
        patient, each guided setting."""
        await self.start()
        settings: list[tuple[str, str | None, dict | None]] = [(SFT, name, None)]
        if self.config.compare.patient:
            settings.append((PATIENT, None, None))
        settings += [(setting, None, g.model_dump()) for setting, g in self.config.compare.guided.items()]
        gate = asyncio.Semaphore(self.config.predict.concurrency)
        jobs = [self._one(gate, fold, setting, model, guidance, row)
                for setting, model, guidance in settings for row in rows]
        return list(await asyncio.gather(*jobs))

    async def close(self) -> None:
        if self.services is not None:
            await self.services.engine.shutdown(grace_seconds=1)
            self.services = None

    def memory_reset(self) -> None:
        from llmdoctor.training.kfold import PeakMemory

        PeakMemory.reset()

    def memory_peak_mb(self) -> float:
        from llmdoctor.training.kfold import PeakMemory

        return PeakMemory.read_mb()

    async def _one(self, gate, fold: int, setting: str, model: str | None, guidance: dict | None,
                   row: SftRow) -> Answer:
        from llmdoctor.server.api.protocol_chat import ChatCompletionRequest
        from llmdoctor.server.api.protocol_completions import CompletionRequest
        from llmdoctor.server.errors import LLMDoctorError

        p = self.config.predict
        common = {"model": model, "max_tokens": p.max_tokens, "temperature": p.temperature,
                  "seed": p.seed + row.index, "guidance": guidance}
        chat = self.services.chat.prompts.tokenizer.chat_template is not None  # as the adapter was trained
        async with gate:
            try:
                if chat:
                    messages = ([{"role": "user", "content": row.prompt}] if isinstance(row.prompt, str)
                                else [{"role": m.role, "content": m.content} for m in row.prompt])
                    reply = await self.services.chat.complete(ChatCompletionRequest(messages=messages, **common))
                    text = reply.choices[0].message.content
                else:
                    reply = await self.services.completions.complete(CompletionRequest(prompt=row.prompt, **common))
                    text = reply.choices[0].text
            except LLMDoctorError as exc:  # recorded with the prediction and scored as an empty answer; the run goes on
                logger.warning("fold %d, %s, row %d: %s", fold, setting, row.index, exc)
                return Answer(setting=setting, index=row.index, text="", error=str(exc))
        return Answer(setting=setting, index=row.index, text=text)


def engine_settings(config: KfoldConfig):
    """The ServerSettings of the engine that answers: the run's model, device and doctors."""
    from llmdoctor.server.config import NamedPath, ServerSettings

    c = config
    return ServerSettings(
        model=None if c.model.path == EMBEDDED else c.model.path,
        engine="torch",
        device=c.device,
        doctor=[NamedPath(name=name, path=path) for name, path in c.compare.doctors.items()],
        default_doctors=c.compare.default_doctors and bool(c.compare.guided),
        max_batch=c.predict.concurrency,
        max_queue=c.predict.concurrency * (2 + len(c.compare.guided)),
        max_lora_rank=max(64, c.sft.lora_r),
    )


def fold_adapter_name(fold: int) -> str:
    return f"fold-{fold}"


class LocalFoldPredictor:
    """One answerer in this process, on one event loop for the run (the engine's events come back to it)."""

    replica_peaks_mb: list[float] | None = None

    def __init__(self, config: KfoldConfig):
        self._runner = asyncio.Runner()
        self.answerer = FoldAnswerer(config)

    def start(self) -> None:
        """Load the engine and the doctors (the first predict does it otherwise)."""
        self._runner.run(self.answerer.start())

    def predict(self, fold: int, rows: list[SftRow], adapter: Path) -> list[Answer]:
        return self._runner.run(self._predict(fold, rows, adapter))

    async def _predict(self, fold: int, rows: list[SftRow], adapter: Path) -> list[Answer]:
        name = fold_adapter_name(fold)
        await self.answerer.load(name, str(adapter))
        try:
            return await self.answerer.answer(fold, name, rows)
        finally:
            await self.answerer.unload(name)

    def close(self) -> None:
        try:
            self._runner.run(self.answerer.close())
        finally:
            self._runner.close()


class ReplicaError(RuntimeError):
    """A replica failed (to start, to load the fold's adapter, to answer); the message is the replica's."""


class RayFoldPredictor:
    """predict.replicas answerers as Ray actors. Their peak resident memory per fold is in replica_peaks_mb."""

    def __init__(self, config: KfoldConfig):
        self.config = config
        self.ray_address = config.predict.ray_address
        self.replicas = config.predict.replicas
        self.actors: list = []
        self.replica_peaks_mb: list[float] | None = None

    def start(self) -> None:
        import ray

        from llmdoctor.server.replicas.ray_placement import replica_placement, start_ray

        if not self.actors:
            start_ray(self.ray_address, self.replicas)
            settings = engine_settings(self.config)
            placement, threads = replica_placement(settings, self.replicas, self.ray_address is None)
            actor_class = ray.remote(FoldAnswerer).options(**placement)
            self.actors = [actor_class.remote(self.config, threads) for _ in range(self.replicas)]
        self._get([actor.start.remote() for actor in self.actors])

    def predict(self, fold: int, rows: list[SftRow], adapter: Path) -> list[Answer]:
        self.start()
        name = fold_adapter_name(fold)
        self._get([actor.memory_reset.remote() for actor in self.actors])
        # every replica loads the fold's adapter from its path (shared storage on a cluster, as for
        # the replicated server's patient adapters), then answers its share of the rows
        self._get([actor.load.remote(name, str(Path(adapter).resolve())) for actor in self.actors])
        try:
            shares = [rows[i::self.replicas] for i in range(self.replicas)]
            answers = self._get([actor.answer.remote(fold, name, share)
                                 for actor, share in zip(self.actors, shares) if share])
        finally:
            self._get([actor.unload.remote(name) for actor in self.actors])
        self.replica_peaks_mb = [round(mb, 1) for mb in self._get([a.memory_peak_mb.remote() for a in self.actors])]
        order = {row.index: position for position, row in enumerate(rows)}
        merged = [a for share in answers for a in share]
        # the order a single process gives: setting by setting, rows in fold order
        settings = {setting: n for n, setting in enumerate(dict.fromkeys(a.setting for a in merged))}
        return sorted(merged, key=lambda a: (settings[a.setting], order[a.index]))

    def close(self) -> None:
        import ray

        try:
            if self.actors:
                ray.get([actor.close.remote() for actor in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - shutting down: Ray stops the actors below whatever they say
            pass
        finally:
            self.actors = []
            ray.shutdown()

    @staticmethod
    def _get(refs):
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayError as exc:
            from llmdoctor.server.replicas.ray_placement import replica_error_message

            raise ReplicaError(replica_error_message(exc)) from None


def fold_predictor(config: KfoldConfig):
    if config.predict.replicas > 1 or config.predict.ray_address is not None:
        return RayFoldPredictor(config)
    return LocalFoldPredictor(config)
