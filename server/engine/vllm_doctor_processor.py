"""The doctor rule inside vLLM: a V1 custom logits processor (DESIGN.md, "Engines"; FACTS.md).

vLLM builds `DoctorLogitsProcessor` in its engine-core process, next to the patient. The processor
follows vLLM's persistent batch through `update_state(BatchUpdate)` (requests added, removed, moved)
and in `apply(logits)` replaces each guided row by the rule

    log_softmax(alpha * log_softmax(patient logits) + sum_i beta_i * log_softmax(doctor_i logits))

leaving unguided rows untouched (and costing nothing when no row is guided). vLLM then applies the
request's temperature / top-k / top-p and samples, as for any logits processor.

The doctors run in the same `DoctorRunner` the torch engine uses, on a transformers copy of the
doctor base in this process. Each guided request has one doctor row per doctor, with its own KV
cache, fed every step with the token vLLM actually sampled (read from the live output list vLLM
hands us). Doctor adapters arrive at run time through `collective_rpc` into `DoctorWorkerExtension`.

The doctor forward overlaps the patient's: vLLM calls `update_state` at the start of every step,
before its forward, when the tokens sampled last step are already in the output lists. The doctor
step is planned there and run on a thread of its own; `apply` (after vLLM's forward) waits for it
and writes the rule. Both forwards read the same tokens, so the result is the one a serial step
gives; only the wall time changes.

Failures stay with the requests that cause them (issue 15.1): a guided row whose rule comes out NaN/inf,
or whose doctor forward fails again when retried alone after a failed batched forward, is "blamed". A
logits processor cannot abort a request, so a blamed row is forced to the EOS token from then on: it ends
with finish_reason "stop" (an ignore_eos request keeps getting EOS until max_tokens), and the server
log says why. Every other row gets exactly the logits it would have got without it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from llmdoctor.server.engine.decode_rule import guided_rule, logprobs_from_logits, rule_weights
from llmdoctor.server.engine.doctor_runner import DoctorRunner
from llmdoctor.server.engine.logit_adjust import mask_and_bias
from llmdoctor.server.engine.lora_host import LoraHost
from llmdoctor.server.engine.model_checks import check_full_attention, eos_ids
from llmdoctor.server.engine.row_batch import RowBatch, StepPlan
from llmdoctor.server.engine.vllm_guidance import EXTRA_ARGS_KEY, RowGuidance, parse_guidance
from llmdoctor.server.engine.vllm_traces import TraceBook, Wanted
from llmdoctor.server.errors import AdapterError, ConflictError

logger = logging.getLogger(__name__)

CONFIG_KEY = "llmdoctor"  # vllm_config.additional_config[CONFIG_KEY] = {"doctor_base": folder}


class DoctorHost:
    """This process's doctor base model and its loaded doctor adapters, shared by every processor
    instance vLLM builds here (it may build the input batch more than once)."""

    def __init__(self, folder: str, dtype: torch.dtype, device: torch.device, vocab_size: int):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        check_full_attention(model.config, folder)
        if model.config.vocab_size != vocab_size:
            raise ValueError(f"doctor base {folder} has {model.config.vocab_size} logits, the patient {vocab_size}; "
                             "doctors must share the patient's vocabulary")
        eos = eos_ids(model.generation_config, model.config)
        self.runner = DoctorRunner(RowBatch(LoraHost(model), eos[0] if eos else 0, dtype), shared=False)
        self.lock = threading.Lock()  # one doctor step or adapter change at a time
        self.traces = TraceBook()  # what the rule did, for the API to take (explain, KL); the engine thread's only
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmdoctor-doctors", initializer=_doctor_thread_setup,
                                       initargs=(device.type == "cpu",))
        logger.info("doctor runner ready in the vLLM engine process: base %s on %s", folder, device)

    def step(self, plan: StepPlan):
        with self.lock:
            return self.runner.step(plan)

    def load(self, name: str, config: dict, weights: bytes) -> None:
        """Build doctor `name` from checked bytes (the engine checked them; all or nothing)."""
        with self.lock:
            self.runner.host.load(name, config, weights)

    def unload(self, name: str) -> None:
        with self.lock:
            if name in self.runner.host.names():  # also called to undo a load that failed
                self.runner.host.unload(name)

    def names(self) -> list[str]:
        return self.runner.host.names()


def _doctor_thread_setup(on_cpu: bool) -> None:
    """Autograd off, as in vLLM's own thread (the mode is per thread). On CPUs vLLM pins its worker to its
    compute cores and leaves the others to its own processes; the doctor thread takes the cores the
    parent process (vLLM's engine core) may use, so it can overlap the patient's forward and still keeps
    within whatever taskset or cgroup the operator set."""
    torch.set_grad_enabled(False)
    if on_cpu and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, os.sched_getaffinity(os.getppid()))  # 0: this thread
        except OSError:  # the parent is gone or not ours to read: stay where vLLM put us
            pass


_HOST: DoctorHost | None = None


def doctor_host(vllm_config, device: torch.device) -> DoctorHost:
    global _HOST
    if _HOST is None:
        settings = vllm_config.additional_config.get(CONFIG_KEY, {})
        model_config = vllm_config.model_config
        _HOST = DoctorHost(settings.get("doctor_base") or model_config.model, model_config.dtype, device,
                           model_config.get_vocab_size())
    return _HOST


@dataclass
class GuidedRow:
    """One guided request in vLLM's persistent batch."""

    key: int  # ours: vLLM's logits processors are not told request ids
    guidance: RowGuidance
    prompt: list[int]
    output: list[int]  # vLLM's live list of the request's sampled tokens
    stops: tuple[int, ...] = ()  # what min_tokens keeps out: EOS (unless ignore_eos) and stop_token_ids
    fed: int = 0  # tokens the doctor rows hold (0: not joined)
    ended: bool = False  # blamed for a failure: forced to EOS until vLLM retires it

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def doctor_rows(self) -> tuple[int, tuple[str, ...]]:
        return self.key, self.guidance.doctors


@dataclass
class Prepared:
    """A step's doctor work: the batch indices it guides, their rows, the plan, its running forward."""

    indices: list[int]
    rows: list[GuidedRow]
    plan: StepPlan
    future: Future | None


class DoctorLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Runs on the API side before a request reaches the engine: a ValueError becomes HTTP 400."""
        parse_guidance(sampling_params.extra_args)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.host = doctor_host(vllm_config, device)
        self.rows: dict[int, GuidedRow] = {}  # batch index -> guided request
        self.leaving: list[GuidedRow] = []  # their doctor rows go at the next step
        self.keys = itertools.count()
        self.ending: list[int] = []  # batch indices of blamed rows, this step
        self.prepared: Prepared | None = None  # this step's doctor step, started by update_state
        base = self.host.runner.host.base
        eos = eos_ids(base.generation_config, base.config)
        self.end_token = eos[0] if eos else None  # what a blamed row is forced to (None: left unguided)

    def is_argmax_invariant(self) -> bool:
        return False  # the rule changes the argmax: greedy requests must come through apply

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Called at the start of every step, before vLLM's forward: follow the batch, then start the doctor
        step of this step on the doctor thread (see the module docstring)."""
        self._settle()
        if batch_update is not None:
            self._follow(batch_update)
        if not self.rows and not self.leaving:
            return
        try:
            self.prepared = self._prepare(launch=True)
        except Exception:
            logger.exception("planning the doctor step failed; guided rows rejoin")
            self._reset_doctor_rows()
            self.leaving.clear()

    def _follow(self, batch_update: BatchUpdate) -> None:
        for index in batch_update.removed:
            self._drop(index)
        for index, params, prompt, output in batch_update.added:
            self._drop(index)  # an added request may replace the one at its index
            guidance = parse_guidance(params.extra_args)
            if guidance is not None:
                stops = tuple(sorted(params.all_stop_token_ids)) if guidance.min_tokens else ()
                self.rows[index] = GuidedRow(next(self.keys), guidance, list(prompt or ()), output, stops)
                if guidance.trace is not None:
                    self.host.traces.open(guidance.trace)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if row_b is not None:
                if direction == MoveDirectionality.SWAP:
                    self.rows[a] = row_b
                else:  # a one-way move onto b replaced b's request
                    self._leave(row_b)

    def _drop(self, index: int) -> None:
        row = self.rows.pop(index, None)
        if row is not None:
            self._leave(row)

    def _leave(self, row: GuidedRow) -> None:
        self.leaving.append(row)
        if row.guidance.trace is not None:
            self.host.traces.close(row.guidance.trace)

    def _prepare(self, launch: bool) -> Prepared:
        """Bookkeeping (whose doctor rows leave or restart, who is guided this step), the doctor plan, and,
        with `launch`, its forward started on the doctor thread."""
        ready = self._sync_rows()
        plan = self._plan(ready)
        future = self.host.pool.submit(self.host.step, plan) if launch and (plan.join or plan.feed) else None
        return Prepared(ready, [self.rows[i] for i in ready], plan, future)

    def _settle(self) -> None:
        """Undo a doctor step whose `apply` never came (vLLM ran `update_state` but sampled nothing): its doctor
        rows hold a position the patient has not reached, so they leave and rejoin with the whole prefix."""
        prepared, self.prepared = self.prepared, None
        if prepared is None:
            return
        if prepared.future is not None:
            try:
                prepared.future.result()
            except Exception:  # noqa: BLE001 - every doctor row rejoins afresh below
                self._reset_doctor_rows()
        fed = [row for row in prepared.rows if row.fed]
        self.host.runner.leave([row.doctor_rows for row in fed])
        for row in fed:
            row.fed = 0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.prepared is None and not self.rows and not self.leaving:
            return logits
        try:
            return self._apply(logits)
        except Exception:
            # Last resort for a fault outside the doctor forward (which _apply blames per row): vLLM would
            # declare the whole engine dead. Start the doctor rows afresh; this step's rows go unguided.
            logger.exception("the doctor step failed outside the forward; guided rows go unguided this step")
            self._settle()
            self._reset_doctor_rows()
            self.leaving.clear()
            return logits

    def _apply(self, logits: torch.Tensor) -> torch.Tensor:
        # 1) the doctor step update_state started (or, if it did not, this step's, run here)
        prepared = self.prepared if self.prepared is not None else self._prepare(launch=False)
        self.prepared = None
        ready, plan, future = prepared.indices, prepared.plan, prepared.future
        # 2) one batched doctor forward for every guided request, then the rule for all of them in one call
        try:
            result = future.result() if future is not None else self.host.step(plan)
        except Exception:  # noqa: BLE001 - blamed below, row by row
            logger.exception("the doctor forward failed; retrying its requests one at a time")
            self._reset_doctor_rows()
            self._guide_isolated(logits, ready)
        else:
            self._write_rule(logits, ready, result)
        # 3) rows blamed for a failure, now or earlier, are forced to end
        self._force_end(logits)
        return logits

    def _sync_rows(self) -> list[int]:
        """Drop the doctor rows of leavers and of rows out of step; return the batch indices to guide."""
        ready, restart, self.ending = [], [], []
        for index, row in self.rows.items():
            if row.ended:
                self.ending.append(index)
                continue
            if not row.guidance.doctors or not row.fed:  # alpha alone, or new
                ready.append(index)
            elif row.length == row.fed + 1:  # the usual step: one new token
                ready.append(index)
            elif row.length == row.fed:
                # No token since the last step (a chunked prefill continuing): vLLM throws this row's sample
                # away, so leave its logits alone; the doctor rows rejoin when the request moves on.
                restart.append(row)
            else:  # out of step (preempted and recomputed): rejoin with the whole prefix
                restart.append(row)
                ready.append(index)
        gone = [r for r in self.leaving if r.fed] + restart
        if gone:  # one cache compaction for everyone leaving
            self.host.runner.leave([r.doctor_rows for r in gone])
        for row in restart:
            row.fed = 0
        self.leaving.clear()
        return ready

    def _plan(self, indices: list[int]) -> StepPlan:
        """Feed each row its new token, or join it with its whole prefix; the rows then hold `length` tokens."""
        plan = StepPlan()
        for index in indices:
            row = self.rows[index]
            if row.guidance.doctors and row.fed:
                self.host.runner.feed(plan, row.key, row.output[-1], row.guidance.doctors)
            elif row.guidance.doctors:
                self.host.runner.join(plan, row.key, tuple(row.prompt) + tuple(row.output), row.guidance.doctors)
            row.fed = row.length
        return plan

    def _write_rule(self, logits: torch.Tensor, indices: list[int], result) -> None:
        """Replace the guided rows by the rule, all in one call; rows that come out non-finite are blamed."""
        if not indices:
            return
        rows = [self.rows[index] for index in indices]
        patient = logprobs_from_logits(logits[indices])  # (G, V)
        doctors = self.host.runner.logprobs(result, [row.doctor_rows for row in rows])
        alpha, betas = rule_weights([row.guidance.alpha for row in rows], [row.guidance.betas for row in rows],
                                    patient.device)
        ruled = guided_rule(patient, doctors, alpha, betas, [row.guidance.max_kl for row in rows])
        rule = ruled.logprobs
        finite = rule.isfinite().all(dim=-1).tolist()  # (G,): one transfer per step (before min_tokens' -inf)
        # min_tokens and logit_bias after the rule (logit_adjust.py); vLLM's penalties follow this processor
        adjusted = [i for i, row in enumerate(rows)
                    if row.guidance.logit_bias or len(row.output) < row.guidance.min_tokens]
        if adjusted:
            mask_and_bias(rule, adjusted, [rows[i].guidance for i in adjusted], [len(rows[i].output) for i in adjusted],
                          [rows[i].stops for i in adjusted])
        logits[indices] = rule.to(logits.dtype)
        self._record(rows, rule, patient, doctors, ruled)
        for index, ok in zip(indices, finite):
            if not ok:
                logger.error("non-finite rule log-probs in batch row %d; ending that request", index)
                self._blame(index)

    def _record(self, rows: list[GuidedRow], rule: torch.Tensor, patient: torch.Tensor, doctors: torch.Tensor | None,
                ruled) -> None:
        """Keep what the rule did at each traced row's next position for the API (vllm_traces.py): its KL and
        scale, and under explain the distributions the token will be drawn from and compared with."""
        for i, row in enumerate(rows):
            if row.guidance.trace is None:
                continue
            kept = None
            if row.guidance.explain:
                width = len(row.guidance.doctors)
                kept = (rule[i].clone(), patient[i].clone(), None if doctors is None else doctors[i, :width].clone())
            self.host.traces.record(row.guidance.trace, len(row.output), ruled.kl[i], ruled.scale[i], kept)

    def _guide_isolated(self, logits: torch.Tensor, indices: list[int]) -> None:
        """After a failed doctor forward: each row's doctors alone, on an emptied runner. A row whose forward
        fails again is blamed; the others are guided as usual (and rejoin together next step)."""
        for index in indices:
            try:
                result = self.host.step(self._plan([index]))
            except Exception:  # noqa: BLE001 - the fault follows this request: blame it
                logger.exception("the doctor forward failed again for batch row %d alone; ending that request", index)
                self._reset_doctor_rows()
                self._blame(index)
                continue
            self._write_rule(logits, [index], result)
            self._reset_doctor_rows()  # so the next row runs alone too

    def _blame(self, index: int) -> None:
        """A processor cannot abort a request: the row is forced to EOS from now on (see _force_end)."""
        row = self.rows[index]
        if row.fed:
            self.host.runner.leave([row.doctor_rows])
        row.fed, row.ended = 0, True
        self.ending.append(index)

    def _force_end(self, logits: torch.Tensor) -> None:
        """EOS for every blamed row (`ending`, gathered this step), every other token impossible."""
        if self.end_token is None or not self.ending:
            return  # nothing to end with: the blamed rows keep the patient's logits (unguided)
        logits[self.ending] = float("-inf")
        logits[self.ending, self.end_token] = 0.0

    def _reset_doctor_rows(self) -> None:
        """Drop every doctor row (after a failed forward its cache may be half-written); all rejoin."""
        runner = self.host.runner
        runner.rows.remove(list(runner.rows.keys))
        for row in self.rows.values():
            row.fed = 0


class DoctorWorkerExtension:
    """Methods vLLM mixes into its worker (`worker_extension_cls`), reached from the API process with
    `AsyncLLM.collective_rpc(name, args=...)`. They run between engine steps, so never during apply."""

    def llmdoctor_load_doctor(self, name: str, config: dict, weights: bytes) -> str | None:
        """Load a doctor from the adapter_config dict and safetensors bytes the engine checked;
        returns an error message instead of raising (it crosses processes)."""
        try:
            doctor_host(self.vllm_config, self.device).load(name, config, weights)
        except (AdapterError, ConflictError) as exc:
            return str(exc)
        return None

    def llmdoctor_unload_doctor(self, name: str) -> None:
        doctor_host(self.vllm_config, self.device).unload(name)

    def llmdoctor_take_traces(self, wanted: Wanted) -> dict:
        """What the rule did at the positions the API names (vllm_traces.TraceBook.take)."""
        return doctor_host(self.vllm_config, self.device).traces.take(wanted)

    def llmdoctor_doctors(self) -> list[str]:
        return doctor_host(self.vllm_config, self.device).names()


__all__ = ["EXTRA_ARGS_KEY", "DoctorLogitsProcessor", "DoctorWorkerExtension"]
