"""The held-out rows of a k-fold run, answered through the engine and the chat / completions services the HTTP
API uses (server/api/app.build_services), in this process: a row gets exactly the answer a client sending it
would get. The engine and the doctors load once for the run; each fold's adapter is hot-loaded as a patient
adapter (as POST /v1/adapters does) and unloaded when the fold is predicted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from llmdoctor.server.model_store import EMBEDDED
from llmdoctor.training.kfold import PATIENT, SFT, Prediction, is_correct
from llmdoctor.training.kfold_config import KfoldConfig
from llmdoctor.training.sft_data import SftRow

logger = logging.getLogger(__name__)


class FoldPredictor:
    def __init__(self, config: KfoldConfig):
        self.config = config
        self._runner = asyncio.Runner()  # one event loop for the run: the engine's events come back to it
        self._services = None
        self.errors = 0

    def start(self) -> None:
        """Load the engine and the doctors (the first predict does it otherwise)."""
        if self._services is None:
            self._runner.run(self._start())

    def predict(self, fold: int, rows: list[SftRow], adapter: Path) -> list[Prediction]:
        return self._runner.run(self._predict(fold, rows, adapter))

    def close(self) -> None:
        if self._services is not None:
            self._runner.run(self._services.engine.shutdown(grace_seconds=1))
            self._services = None
        self._runner.close()

    async def _start(self):
        from llmdoctor.server.api.app import build_services, load_startup_adapters
        from llmdoctor.server.api.engine_factory import build_engine
        from llmdoctor.server.api.metrics import ServerMetrics
        from llmdoctor.server.config import NamedPath, ServerSettings

        c = self.config
        settings = ServerSettings(
            model=None if c.model.path == EMBEDDED else c.model.path,
            engine="torch",
            device=c.device,
            doctor=[NamedPath(name=name, path=path) for name, path in c.compare.doctors.items()],
            default_doctors=c.compare.default_doctors and bool(c.compare.guided),
            max_batch=c.predict.concurrency,
            max_queue=c.predict.concurrency * (2 + len(c.compare.guided)),
            max_lora_rank=max(64, c.sft.lora_r),
        )
        engine = await asyncio.to_thread(build_engine, settings)
        await engine.start()
        self._services = await build_services(engine, settings, ServerMetrics())
        await load_startup_adapters(self._services.adapters, settings)
        return self._services

    async def _predict(self, fold: int, rows: list[SftRow], adapter: Path) -> list[Prediction]:
        services = self._services or await self._start()
        name = f"fold-{fold}"
        await services.adapters.load_trusted(name, adapter, "patient")
        try:
            settings: list[tuple[str, str | None, dict | None]] = [(SFT, name, None)]
            if self.config.compare.patient:
                settings.append((PATIENT, None, None))
            settings += [(setting, None, g.model_dump()) for setting, g in self.config.compare.guided.items()]
            gate = asyncio.Semaphore(self.config.predict.concurrency)
            jobs = [self._one(services, gate, fold, setting, model, guidance, row)
                    for setting, model, guidance in settings for row in rows]
            return list(await asyncio.gather(*jobs))
        finally:
            await services.adapters.unload(name)

    async def _one(self, services, gate, fold: int, setting: str, model: str | None, guidance: dict | None,
                   row: SftRow) -> Prediction:
        from llmdoctor.server.api.protocol_chat import ChatCompletionRequest
        from llmdoctor.server.api.protocol_completions import CompletionRequest
        from llmdoctor.server.errors import LLMDoctorError

        p = self.config.predict
        common = {"model": model, "max_tokens": p.max_tokens, "temperature": p.temperature,
                  "seed": p.seed + row.index, "guidance": guidance}
        chat = services.chat.prompts.tokenizer.chat_template is not None  # as the adapter was trained (sft_data)
        async with gate:
            try:
                if chat:
                    messages = ([{"role": "user", "content": row.prompt}] if isinstance(row.prompt, str)
                                else [{"role": m.role, "content": m.content} for m in row.prompt])
                    reply = await services.chat.complete(ChatCompletionRequest(messages=messages, **common))
                    text = reply.choices[0].message.content
                else:
                    reply = await services.completions.complete(CompletionRequest(prompt=row.prompt, **common))
                    text = reply.choices[0].text
            except LLMDoctorError as exc:  # counted and scored wrong; the run goes on
                self.errors += 1
                logger.warning("fold %d, %s, row %d: %s", fold, setting, row.index, exc)
                text = ""
        reference = row.response if isinstance(row.response, str) else row.response[-1].content
        return Prediction(fold=fold, setting=setting, index=row.index, label=row.label, reference=reference,
                          prediction=text, correct=is_correct(self.config.score, text, reference))
