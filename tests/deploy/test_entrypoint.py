"""deploy/docker-entrypoint.sh, run for real with bash; LLMDOCTOR_BIN points it at a fake llmdoctor
that prints the arguments it was given as JSON."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "docker-entrypoint.sh"


@pytest.fixture
def fake_llmdoctor(tmp_path) -> Path:
    script = tmp_path / "llmdoctor"
    script.write_text(f"#!{sys.executable} -S\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def entrypoint(fake_llmdoctor):
    """Runs the entrypoint with the given arguments and extra env vars; returns the CompletedProcess."""

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMDOCTOR_")}
        env = {**clean, "LLMDOCTOR_BIN": str(fake_llmdoctor), **env}
        return subprocess.run(["bash", str(ENTRYPOINT), *args], check=False, env=env, capture_output=True, text=True,
                              timeout=30)

    return run


def llmdoctor_argv(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just released by the kernel)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_entrypoint_serve_runs_llmdoctor_serve_with_its_arguments_intact(entrypoint):
    args = ["serve", "--port", "9000", "--doctor", "kind=/adapters/a folder"]
    assert llmdoctor_argv(entrypoint(*args)) == args


def test_entrypoint_without_arguments_serves(entrypoint):
    assert llmdoctor_argv(entrypoint()) == ["serve"]


def test_entrypoint_leading_flag_is_a_serve_flag(entrypoint):
    assert llmdoctor_argv(entrypoint("--replicas", "2")) == ["serve", "--replicas", "2"]


@pytest.mark.parametrize("subcommand", ["batch", "train", "eval", "data", "recipe", "merge"])
def test_entrypoint_passes_llmdoctor_subcommands_through(entrypoint, subcommand):
    assert llmdoctor_argv(entrypoint(subcommand, "--x", "1")) == [subcommand, "--x", "1"]


def test_entrypoint_runs_any_other_command_as_is(entrypoint):
    result = entrypoint("echo", "hi")
    assert (result.returncode, result.stdout) == (0, "hi\n")


@pytest.mark.parametrize("flag", ["--help", "help", "-h"])
def test_entrypoint_help_prints_usage_without_starting_llmdoctor(entrypoint, flag):
    result = entrypoint(flag)
    assert result.returncode == 0 and result.stdout.startswith("usage: llmdoctor-entrypoint")
    assert "LLMDOCTOR_WAIT_FOR_RAY" in result.stdout


@pytest.mark.parametrize("args", [["serve"], ["--port", "9000"], ["batch"]])
def test_entrypoint_waits_for_a_ray_head_that_accepts_connections(entrypoint, args):
    with socket.socket() as ray_head:
        ray_head.bind(("127.0.0.1", 0))
        ray_head.listen()
        address = f"127.0.0.1:{ray_head.getsockname()[1]}"
        result = entrypoint(*args, LLMDOCTOR_WAIT_FOR_RAY=address, LLMDOCTOR_WAIT_TIMEOUT="5")
    assert llmdoctor_argv(result)[0] in ("serve", "batch")


def test_entrypoint_exits_1_naming_a_ray_head_that_never_answers(entrypoint, closed_port):
    address = f"127.0.0.1:{closed_port}"
    result = entrypoint("serve", LLMDOCTOR_WAIT_FOR_RAY=address, LLMDOCTOR_WAIT_TIMEOUT="1")
    assert result.returncode == 1 and result.stdout == ""  # llmdoctor never started
    assert f"Ray at {address} did not accept connections within 1s" in result.stderr


def test_entrypoint_does_not_wait_for_ray_before_training(entrypoint, closed_port):
    result = entrypoint("train", LLMDOCTOR_WAIT_FOR_RAY=f"127.0.0.1:{closed_port}", LLMDOCTOR_WAIT_TIMEOUT="30")
    assert llmdoctor_argv(result) == ["train"]


@pytest.mark.parametrize(("name", "value"), [("LLMDOCTOR_WAIT_FOR_RAY", "ray-head"),
                                              ("LLMDOCTOR_WAIT_TIMEOUT", "soon")])
def test_entrypoint_bad_wait_setting_exits_1_naming_it(entrypoint, name, value):
    env = {"LLMDOCTOR_WAIT_FOR_RAY": "127.0.0.1:6379", name: value}
    result = entrypoint("serve", **env)
    assert result.returncode == 1 and name in result.stderr and value in result.stderr
