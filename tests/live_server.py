"""Start the real server (`python -m llmdoctor.server.cli serve`) on a free local port, for tests.

A subprocess, not an in-thread app: the tests then see exactly what a user sees (the CLI, uvicorn,
signals, the engine thread), and a wedged server cannot hang the test process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT = 120.0  # first start may convert the embedded GGUF (~40 s); later starts take ~5 s
VLLM_START_TIMEOUT = 300.0  # --engine vllm: import ~15 s, engine and worker processes ~30-60 s on 2 busy cores


@dataclass
class LiveServer:
    process: subprocess.Popen
    url: str
    log_path: Path
    api_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def openai(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key or "unused", max_retries=0, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """One unlabelled sample from GET /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(f"{name} not in /metrics")

    def wait_for_metric(self, name: str, value: float, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        current = self.metric(name)
        while current != value and time.monotonic() < deadline:
            time.sleep(0.05)
            current = self.metric(name)
        return current

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: list[str], log_path: Path, api_key: str | None = None,
                 timeout: float = START_TIMEOUT) -> LiveServer:
    """Start `llmdoctor serve ARGS` and wait until GET /health answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "llmdoctor.server.cli", "serve", "--port", str(port), *args]
    if api_key:
        command += ["--api-key", api_key]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path, api_key)
    _wait_healthy(server, timeout)
    return server


def _wait_healthy(server: LiveServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not healthy after {timeout} s:\n{server.log()}")
