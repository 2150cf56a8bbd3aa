"""One engine replica of `llmdoctor batch`: a Ray Data map_batches UDF (run in an actor pool).

Each actor builds the engine `llmdoctor serve` would (torch or vllm, doctors and patient adapters
from the same settings) and the same chat / completions services the HTTP routes call, so a batch
row gets exactly the answer the API would give for that body, and the same error when it is bad.

`__call__` is a coroutine: Ray Data then runs several batches of an actor at once on one event
loop (RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY, 4), so the engine's continuous batching
keeps decoding rows of the next batch while the slow tail of the previous one finishes. The engine
starts on that loop at the first call (its step loop must live where requests are awaited).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from pydantic import ValidationError

from llmdoctor.server.batch.batch_files import CHAT, result_row

logger = logging.getLogger(__name__)


class BatchWorker:
    def __init__(self, settings: dict[str, Any], guidance: dict | None = None, threads: int | None = None):
        from llmdoctor.server.config import ServerSettings

        if threads:
            import torch

            torch.set_num_threads(threads)  # this actor's share of the CPU cores
        self.settings = ServerSettings(**settings)
        self.guidance = guidance  # --guidance: for rows that bring none
        self.services = None
        self._starting = asyncio.Lock()

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        await self._start()
        ids = [str(i) for i in batch["id"]]
        results = await asyncio.gather(*(self.run_row(i, e, r) for i, e, r in
                                         zip(ids, batch["endpoint"], batch["request"])))
        return {"id": ids, "result": [json.dumps(row, ensure_ascii=False) for row in results]}

    async def _start(self) -> None:
        async with self._starting:
            if self.services is not None:
                return
            from llmdoctor.server.api.app import build_services, load_startup_adapters
            from llmdoctor.server.api.engine_factory import build_engine
            from llmdoctor.server.api.metrics import ServerMetrics

            engine = await asyncio.to_thread(build_engine, self.settings)
            await engine.start()
            services = await build_services(engine, self.settings, ServerMetrics())
            await load_startup_adapters(services.adapters, self.settings)
            self.services = services

    async def run_row(self, request_id: str, endpoint: str, request_json: str) -> dict[str, Any]:
        """The row's result: the endpoint's response, or the error body the API would send."""
        from llmdoctor.server.api.errors import describe_validation_error, error_payload, payload_for
        from llmdoctor.server.api.protocol_chat import ChatCompletionRequest
        from llmdoctor.server.api.protocol_completions import CompletionRequest
        from llmdoctor.server.errors import LLMDoctorError

        body = json.loads(request_json)
        if self.guidance is not None and "guidance" not in body:
            body["guidance"] = self.guidance
        try:
            if body.get("stream"):
                return result_row(request_id, error=error_payload(
                    "stream: a batch row cannot stream; leave it out", "invalid_request_error", 400, "stream")["error"])
            if endpoint == CHAT:
                response = await self.services.chat.complete(ChatCompletionRequest.model_validate(body))
            else:
                response = await self.services.completions.complete(CompletionRequest.model_validate(body))
            return result_row(request_id, response.model_dump(mode="json"))
        except ValidationError as exc:
            message, param = describe_validation_error(exc.errors()[0])
            return result_row(request_id, error=error_payload(message, "invalid_request_error", 400, param)["error"])
        except LLMDoctorError as exc:
            return result_row(request_id, error=payload_for(exc)[1]["error"])
        except Exception:  # one row's failure must not end the job; the log has the traceback
            logger.exception("batch row %s failed", request_id)
            return result_row(request_id, error=payload_for(RuntimeError())[1]["error"])
