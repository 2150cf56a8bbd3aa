"""The side channel behind explain and the KL tally on the vllm engine (vllm_traces.py), without vLLM."""

import asyncio

import pytest
import torch

from llmdoctor.server.engine import vllm_traces
from llmdoctor.server.engine.vllm_traces import TraceBook, TraceCollector, explanations


def _rows(vocab=6, doctors=2):
    rule = torch.log_softmax(torch.arange(vocab, dtype=torch.float32), -1)
    patient = torch.log_softmax(torch.zeros(vocab), -1)
    return rule, patient, torch.log_softmax(torch.randn(doctors, vocab), -1)


def test_records_are_taken_once_with_the_tokens_the_api_names():
    book = TraceBook()
    book.open("r")
    rows = _rows()
    book.record("r", 0, torch.tensor(0.5), torch.tensor(1.0), rows)
    book.record("r", 1, torch.tensor(0.25), torch.tensor(0.5), None)
    taken = book.take({"r": (0, [3, 4])})["r"]
    assert [(p, t, kl, s) for p, t, kl, s, _ in taken] == [(0, 3, 0.5, 1.0), (1, 4, 0.25, 0.5)]
    rule, patient, doctors = rows
    assert taken[0][4][:4] == pytest.approx([rule[3].item(), patient[3].item(), 0.5, 1.0])
    assert taken[0][4][4:] == pytest.approx(doctors[:, 3].tolist())
    assert taken[1][4] is None  # no explain: the KL alone
    assert book.take({"r": (0, [3, 4])}) == {"r": []}  # taken once
    (entry,) = explanations(taken, ("a", "b"))
    assert entry.token_id == 3 and [name for name, _ in entry.doctor_logprobs] == ["a", "b"]


def test_a_redrawn_position_replaces_the_thrown_away_sample():
    book = TraceBook()
    book.open("r")
    book.record("r", 0, torch.tensor(9.0), torch.tensor(1.0), None)  # a prompt's earlier chunk: sample dropped
    book.record("r", 0, torch.tensor(0.1), torch.tensor(1.0), None)
    assert [kl for _, _, kl, _, _ in book.take({"r": (0, [7])})["r"]] == [pytest.approx(0.1)]


def test_blamed_steps_and_unknown_requests_give_nothing():
    book = TraceBook()
    book.open("r")
    book.record("r", 0, torch.tensor(float("nan")), torch.tensor(1.0), _rows())
    assert book.take({"r": (0, [1]), "other": (0, [1])}) == {"r": []}
    book.record("never-opened", 0, torch.tensor(0.1), torch.tensor(1.0), None)
    assert len(book) == 1


def test_finished_requests_wait_for_their_last_take_then_go(monkeypatch):
    book = TraceBook()
    clock = [100.0]
    monkeypatch.setattr(vllm_traces.time, "monotonic", lambda: clock[0])
    for trace in ("taken", "abandoned", "preempted"):
        book.open(trace)
        book.record(trace, 0, torch.tensor(0.1), torch.tensor(1.0), None)
        book.close(trace)
    book.open("preempted")  # back in the batch: kept however long it takes
    assert len(book.take({"taken": (0, [5])})["taken"]) == 1  # its last record taken after it left: gone
    assert len(book) == 2
    clock[0] += vllm_traces.KEEP_SECONDS + 1
    book.take({})
    assert len(book) == 1 and book.take({"preempted": (0, [2])})["preempted"]


async def test_collector_serves_every_waiting_request_in_one_rpc_per_round():
    calls = []

    async def rpc(method, args):
        calls.append(args[0])
        await asyncio.sleep(0.01)
        return [None, {trace: [(start, tokens[0], 0.1, 1.0, None)] for trace, (start, tokens) in args[0].items()}]

    collector = TraceCollector(rpc)
    results = await asyncio.gather(*(collector.take(f"r{i}", i, [i + 10]) for i in range(5)))
    assert [r[0][:2] for r in results] == [(i, i + 10) for i in range(5)]
    assert len(calls) == 1 and set(calls[0]) == {f"r{i}" for i in range(5)}


async def test_collector_hands_an_rpc_failure_to_each_waiting_request():
    async def rpc(method, args):
        raise RuntimeError("engine gone")

    collector = TraceCollector(rpc)
    with pytest.raises(RuntimeError, match="engine gone"):
        await collector.take("r", 0, [1])
