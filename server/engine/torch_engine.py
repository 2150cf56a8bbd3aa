"""The pure-PyTorch engine: continuous batching over transformers models with a doctor runner.

One thread runs the decode loop (never the asyncio thread: a forward would stall every other
request's I/O). Requests and adapter commands reach it through an inbox; token events go back
through each request's asyncio queue. Every step: admit waiting requests, run one forward per
model (patient rows and, on a shared base, doctor rows together), apply the decode rule, sample,
emit, and drop finished rows. New requests join between steps; finished ones leave.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import torch

from llmdoctor.server.adapter_folders import read_folder_for_engine
from llmdoctor.server.engine.admission import Admission
from llmdoctor.server.engine.adapter_table import AdapterTable
from llmdoctor.server.engine.decode_rule import RuleStep, guided_rule, logprobs_from_logits, rule_weights
from llmdoctor.server.engine.doctor_runner import DoctorRunner
from llmdoctor.server.engine.guidance_trace import explanation, gather_trace
from llmdoctor.server.engine.logit_adjust import adjust_scores, needs_adjusting
from llmdoctor.server.engine.lora_host import LoraHost
from llmdoctor.server.engine.model_checks import check_full_attention, check_same_vocabulary, eos_ids, max_model_len
from llmdoctor.server.engine.protocol import (
    AdapterInfo,
    AdapterKind,
    EngineStats,
    GenerateRequest,
    TokenEvent,
    TokenLogprob,
)
from llmdoctor.server.engine.row_batch import RowBatch, StepLogits, StepPlan
from llmdoctor.server.engine.sampling import SamplingBatch, sample_rows, top_logprobs
from llmdoctor.server.engine.sequence import Sequence
from llmdoctor.server.engine.structured_output import Grammars, mask_rows
from llmdoctor.server.model_store import ResolvedModel

logger = logging.getLogger(__name__)
TORCH_MAX_RANK = 1024  # peft batches any rank; the API's --max-lora-rank is the operator's cap


class TorchEngine:
    """Implements `Engine` (protocol.py) with transformers + peft on CPU or one GPU."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        max_model_len: int | None = None,
        doctor_base: ResolvedModel | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.model_name = model.name
        self.model_folder = model.folder
        self._doctor_source = doctor_base if doctor_base and doctor_base.folder != model.folder else None
        self.doctor_base_name = (self._doctor_source or model).name
        self.max_batch, self.max_queue = max_batch, max_queue
        self._requested_max_len = max_model_len
        self.device, self.dtype = torch.device(device), dtype
        self.max_model_len = 0
        self.eos_token_ids: tuple[int, ...] = ()
        self.vocab_size = 0
        self.table = AdapterTable(reserved_names=(model.name,))
        self.admission = Admission(self.table, max_batch, max_queue)
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._waiting: deque[Sequence] = deque()
        self._running: dict[str, Sequence] = {}
        self._all: dict[str, Sequence] = {}  # submitted and not finished, by request id
        self._lock = threading.Lock()  # guards _all: the asyncio side adds, the engine thread removes
        self._rng = random.Random()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._steps = 0
        self._generated = 0
        self._suspects: list[Sequence] = []  # after a failed step: requests to step alone once

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._load_models)
        self.admission.accepting = True
        self._thread = threading.Thread(target=self._run, name="llmdoctor-engine", daemon=True)
        self._thread.start()

    def _load_models(self) -> None:
        patient = self._load_model(self.model_folder)
        config = patient.config
        self.vocab_size = config.vocab_size
        self.max_model_len = max_model_len(config, self._requested_max_len)
        self.eos_token_ids = eos_ids(patient.generation_config, patient.config)
        pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.patient_rows = RowBatch(LoraHost(patient), pad, self.dtype)
        self.grammars = Grammars(self.model_folder, self.vocab_size)
        if self._doctor_source is None:
            self.doctors = DoctorRunner(self.patient_rows, shared=True)
        else:
            doctor = self._load_model(self._doctor_source.folder)
            check_same_vocabulary(self.model_folder, self._doctor_source.folder)
            self.doctors = DoctorRunner(RowBatch(LoraHost(doctor), pad, self.dtype), shared=False)

    def _load_model(self, folder: Path):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype).to(self.device).eval()
        check_full_attention(model.config, folder)
        return model

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    async def shutdown(self, grace_seconds: float = 10.0) -> None:
        """Stop admitting; let in-flight requests finish for up to `grace_seconds`, then end them."""
        self.admission.accepting = False
        deadline = time.monotonic() + grace_seconds
        while self._all and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._post(self._abort_everything)
        self._post(self._stopped.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)

    # ---------------------------------------------------------------- requests (asyncio side)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        fmt = request.sampling.output_format
        grammar = await asyncio.to_thread(self.grammars.matcher, fmt) if fmt is not None else None  # compiles
        seq = self._submit(request, grammar)
        try:
            while True:
                event = await seq.events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not seq.finished:  # the consumer went away: free the slot now
                self._post(lambda: self._abort(seq.id, "client went away"))

    async def abort(self, request_id: str) -> None:
        self._post(lambda: self._abort(request_id, None))

    def _submit(self, request: GenerateRequest, grammar=None) -> Sequence:
        pinned = self.admission.admit(request, self.vocab_size, self.max_model_len, self.doctors.shared)
        seq = self._new_sequence(request, pinned)
        seq.grammar = grammar
        with self._lock:
            self._all[request.request_id] = seq
        self._post(lambda: self._waiting.append(seq))
        return seq

    def _new_sequence(self, request: GenerateRequest, pinned: list[str]) -> Sequence:
        active = request.guidance.active
        seed = request.sampling.seed if request.sampling.seed is not None else self._rng.getrandbits(63)
        stop = set(request.sampling.stop_token_ids)
        if not request.sampling.ignore_eos:
            stop |= set(self.eos_token_ids)
        return Sequence(
            request=request,
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
            seed=seed,
            stop_ids=frozenset(stop),
            doctors=tuple(d.name for d in active),
            betas=tuple(d.beta for d in active),
            rule_alpha=request.guidance.rule_alpha,
            pinned=tuple(pinned),
        )

    def stats(self) -> EngineStats:
        running = len(self._running)
        return EngineStats(
            running=running,
            waiting=len(self._all) - running,
            max_batch=self.max_batch,
            max_queue=self.max_queue,
            steps=self._steps,
            generated_tokens=self._generated,
        )

    # ---------------------------------------------------------------- adapters (asyncio side)

    def adapters(self) -> list[AdapterInfo]:
        return self.table.list()

    async def load_adapter(self, name: str, path: str, kind: AdapterKind) -> AdapterInfo:
        """Check the folder here (its bytes, read once, against this engine's model), then build the
        adapter from those bytes between decode steps. All or nothing: a failed load leaves the model
        as it was. A load or unload of the same name meanwhile gets ConflictError (409)."""
        with self.table.claim(name):
            self.table.check_free(name)
            patient = kind == "patient"
            base_name = self.model_name if patient else self.doctor_base_name
            folder = self._doctor_source.folder if not patient and self._doctor_source else self.model_folder
            checked = await asyncio.to_thread(read_folder_for_engine, path, kind, TORCH_MAX_RANK, folder)
            host = self.patient_rows.host if patient else self.doctors.host
            await self._call(lambda: host.load(name, checked.config, checked.weights))
            manifest = checked.manifest
            info = AdapterInfo(name, kind, str(manifest.path), base_name, manifest.rank, manifest.meta)
            self.table.add(info)
            return info

    async def unload_adapter(self, name: str) -> None:
        """Hide the adapter from new requests now; free it when in-flight users finish."""
        with self.table.claim(name):
            info = self.table.retire(name)
            if info is not None:
                await self._call(lambda: self._free_adapter(info))

    def _free_adapter(self, info: AdapterInfo) -> None:
        host = self.patient_rows.host if info.kind == "patient" else self.doctors.host
        host.unload(info.name)

    # ---------------------------------------------------------------- the engine thread

    def _post(self, command: Callable[[], None]) -> None:
        self._inbox.put(command)

    async def _call(self, fn: Callable[[], object]):
        """Run `fn` on the engine thread between steps and await its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def command():
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                future.set_exception(exc)

        self._post(command)
        return await asyncio.wrap_future(future)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopped.is_set():
            self._drain_inbox(block=not self._waiting and not self._running)
            self._admit()
            if self._suspects:
                self._step_isolated()
            elif self._running:
                try:
                    self._step(list(self._running.values()))
                except Exception:  # noqa: BLE001 - blame the requests that caused it, keep serving the rest
                    logger.exception("decode step failed; retrying its requests one at a time")
                    self._restart_rows()

    def _drain_inbox(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                command()
            except Exception:  # noqa: BLE001 - one bad command must not stop the decode loop
                logger.exception("engine command failed")
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.max_batch:
            seq = self._waiting.popleft()
            self._running[seq.id] = seq

    def _step(self, seqs: list[Sequence]) -> None:
        """One token for each of `seqs`: every row in the caches plus any joiners (rows share cache columns)."""
        # 1) plan: running rows get their last token, new (or restarted) rows join with their whole prefix
        patient_plan = StepPlan()
        doctor_plan = patient_plan if self.doctors.shared else StepPlan()
        for seq in seqs:
            if seq.admitted:
                patient_plan.feed[seq.id] = seq.output[-1]
                self.doctors.feed(doctor_plan, seq.id, seq.output[-1], seq.doctors)
            else:
                patient_plan.join[seq.id] = (seq.prefix, seq.request.adapter)
                self.doctors.join(doctor_plan, seq.id, seq.prefix, seq.doctors)
                seq.admitted = True
        # 2) one forward per model: patient (+ doctor rows on a shared base), doctor base if separate
        patient = self.patient_rows.step(patient_plan)
        doctor = patient if self.doctors.shared else self.doctors.step(doctor_plan)
        patient_logprobs = logprobs_from_logits(patient.logits)  # (N, V), every row of the patient batch
        # 3) the rule for every guided row in one call; rows it could not make finite fail alone; one draw
        rows = torch.tensor([patient.index[seq.id] for seq in seqs], device=patient_logprobs.device)
        rule = patient_logprobs.index_select(0, rows)  # (R, V): unguided rows are the patient's own
        guided = [i for i, seq in enumerate(seqs) if not seq.request.guidance.is_plain]
        if guided:
            ruled, doctor_logprobs = self._rule_logprobs([seqs[i] for i in guided], rule[guided], doctor,
                                                         patient_logprobs)
            rule[guided] = ruled.logprobs
        params = [seq.request.sampling for seq in seqs]
        self._constrain_and_adjust(rule, seqs, params, patient.logits, rows)
        batch = SamplingBatch.build([p.temperature for p in params], [p.top_k for p in params],
                                    [p.top_p for p in params], [seq.seed for seq in seqs],
                                    [len(seq.output) for seq in seqs], rule.device, [p.min_p for p in params])
        drawn = sample_rows(rule, batch)  # a row's token depends on its row alone, so a bad row spoils no other
        # a usable row has a finite top score: NaN propagates through amax; min_tokens' -inf entries are fine
        finite = rule.amax(dim=-1).isfinite()
        tokens, finite = torch.stack([drawn, finite.long()]).tolist()  # one transfer
        traces = {}
        if guided:  # what the rule did at each guided row's token: one more small transfer
            picked = torch.tensor(guided, device=rule.device)
            values = gather_trace(drawn.index_select(0, picked), rule.index_select(0, picked),
                                  patient_logprobs.index_select(0, rows.index_select(0, picked)), doctor_logprobs,
                                  ruled.kl, ruled.scale).tolist()
            traces = {seqs[i].id: row for i, row in zip(guided, values)}
        if not all(finite):
            seqs, rule, tokens = self._fail_non_finite(seqs, rule, tokens, finite)
            if not seqs:
                return
            params = [seq.request.sampling for seq in seqs]
        # 4) emit; finished requests leave the batch together (one cache compaction)
        finished = []
        for i, (seq, token) in enumerate(zip(seqs, tokens)):
            seq.output.append(token)
            if seq.grammar is not None and not seq.grammar.is_terminated():
                seq.grammar.accept_token(token)
            finish = seq.finish_reason(token)
            explained = None
            if seq.id in traces:
                seq.kl_sum += traces[seq.id][2]
                if seq.request.guidance.explain:
                    explained = (explanation(token, traces[seq.id], seq.doctors),)
            seq.emit((token,), _logprob_info(rule[i], token, params[i].logprobs), finish, explanation=explained)
            if finish is not None:
                finished.append(seq)
        self._release(finished)
        self._steps += 1
        self._generated += len(seqs)

    def _constrain_and_adjust(self, rule: torch.Tensor, seqs: list[Sequence], params: list,
                              patient_logits: torch.Tensor, rows: torch.Tensor) -> None:
        """The grammar mask, then min_tokens, logit_bias and the penalties, in place, on the rows that ask
        (structured_output.py, logit_adjust.py); the rows changed are re-normalised."""
        constrained = [i for i, seq in enumerate(seqs) if seq.grammar is not None]
        adjusting = any(needs_adjusting(p, len(seq.output)) for p, seq in zip(params, seqs))
        if not constrained and not adjusting:
            return
        # an unguided row's repetition penalty acts on the patient's logits, as in vLLM (logit_adjust.py)
        raw = [i for i, (p, seq) in enumerate(zip(params, seqs))
               if seq.request.guidance.is_plain and p.repetition_penalty != 1.0]
        if raw:
            rule[raw] = patient_logits.index_select(0, rows[raw]).to(rule.dtype)
        mask_rows(rule, constrained, [seqs[i].grammar for i in constrained])
        changed = adjust_scores(rule, params, [seq.request.prompt_token_ids for seq in seqs],
                                [seq.output for seq in seqs], [sorted(seq.stop_ids) for seq in seqs]) if adjusting else []
        changed = sorted(set(changed) | set(constrained))
        rule[changed] = logprobs_from_logits(rule[changed]).to(rule.dtype)

    def _rule_logprobs(self, seqs: list[Sequence], patient_logprobs: torch.Tensor, doctor: StepLogits | None,
                       all_patient_logprobs: torch.Tensor) -> tuple[RuleStep, torch.Tensor | None]:
        """The decode rule for the guided requests `seqs`, (G, V), in one call (doctors padded by beta 0), held
        within each request's max_kl; with the doctors' log-probs (G, D, V), for the trace."""
        # on a shared base the doctor rows' log-softmax is already in the patient's
        doctor_logprobs = self.doctors.logprobs(doctor, [(seq.id, seq.doctors) for seq in seqs],
                                                all_patient_logprobs if self.doctors.shared else None)
        alpha, betas = rule_weights([seq.rule_alpha for seq in seqs], [seq.betas for seq in seqs],
                                    patient_logprobs.device)
        budgets = [seq.request.guidance.max_kl for seq in seqs]
        return guided_rule(patient_logprobs, doctor_logprobs, alpha, betas, budgets), doctor_logprobs

    def _release(self, seqs: list[Sequence]) -> None:
        """Remove requests' rows and bookkeeping; free adapters whose unload waited on them."""
        admitted = [seq for seq in seqs if seq.admitted]
        doctor_rows = [(seq.id, seq.doctors) for seq in admitted]
        if self.doctors.shared:  # one compaction of the shared cache
            self.patient_rows.remove([seq.id for seq in admitted] + self.doctors.row_keys(doctor_rows))
        else:
            self.patient_rows.remove([seq.id for seq in admitted])
            self.doctors.leave(doctor_rows)
        for seq in seqs:
            self._running.pop(seq.id, None)
            with self._lock:
                self._all.pop(seq.id, None)
            for name in self.admission.finish(seq.id, list(seq.pinned)):  # leaving adapters nobody uses now
                host = self.patient_rows.host if name == seq.request.adapter else self.doctors.host
                try:
                    host.unload(name)
                finally:
                    self.table.done(name)

    def _abort(self, request_id: str, error: str | None) -> None:
        seq = self._all.get(request_id)
        if seq is None or seq.finished:
            return
        if seq in self._waiting:
            self._waiting.remove(seq)
        seq.emit((), finish="abort", error=error)
        self._release([seq])

    def _abort_everything(self) -> None:
        for request_id in list(self._all):
            self._abort(request_id, "the server is shutting down")

    def _fail(self, seqs: list[Sequence], error: str) -> None:
        """End requests with finish "abort" and `error` (the API makes it that request's error alone)."""
        seqs = [seq for seq in seqs if not seq.finished]
        for seq in seqs:
            seq.emit((), finish="abort", error=error)
        self._release(seqs)

    def _fail_non_finite(self, seqs: list[Sequence], rule: torch.Tensor, tokens: list[int], finite: list[int]):
        """End the requests whose rule row is NaN / inf (their model or doctor output was); keep the rest."""
        keep = [i for i, ok in enumerate(finite) if ok]
        bad = [seq for seq, ok in zip(seqs, finite) if not ok]
        logger.error("non-finite log-probs in the rows of %s; ending those requests", [seq.id for seq in bad])
        self._fail(bad, "engine error: the decode rule gave non-finite log-probs for this request "
                        "(NaN or inf in its patient or doctor output)")
        return [seqs[i] for i in keep], rule[keep], [tokens[i] for i in keep]

    def _restart_rows(self) -> None:
        """After a failed step the caches may be half-written: drop every row. Each running request rejoins
        with its whole prefix, first alone (`_step_isolated`), so a fault that comes back is its own."""
        self._clear_rows()
        self._suspects = list(self._running.values())
        for seq in self._suspects:
            seq.admitted = False

    def _step_isolated(self) -> None:
        """One step per suspect, alone on empty caches. A step that fails again fails that request only;
        the others carry on (they rejoin together at the next ordinary step)."""
        suspects, self._suspects = self._suspects, []
        for seq in suspects:
            if seq.id not in self._running:  # aborted meanwhile
                continue
            # 1) the request alone: prefill its prefix, rule, draw, emit
            try:
                self._step([seq])
            except Exception as exc:  # noqa: BLE001 - the fault follows this request: blame it
                logger.exception("decode step failed again for request %s alone; ending it", seq.id)
                self._fail([seq], f"engine error: {exc}")
            # 2) empty the caches again, so the next request also runs alone
            self._clear_rows()
            seq.admitted = False

    def _clear_rows(self) -> None:
        self.patient_rows.remove(list(self.patient_rows.keys))
        if not self.doctors.shared:
            self.doctors.rows.remove(list(self.doctors.rows.keys))


def _logprob_info(logprobs: torch.Tensor, token: int, top: int | None) -> tuple[TokenLogprob, ...] | None:
    """What the request asked to see of the distribution its token was drawn from."""
    if top is None:
        return None
    return (TokenLogprob(token, float(logprobs[token]), top_logprobs(logprobs, top)),)
