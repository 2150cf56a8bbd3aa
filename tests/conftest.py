# ---- adapter fixtures: real LoRA adapters trained on the embedded model ------------------------
# (owner: adapter folders; helpers and training texts in tests/adapters.py)
# Session-scoped, so each adapter is trained once per test run (~5 s each on 2 CPU cores), and all
# live under one `adapter_root`, the folder to pass as --adapter-root.
from pathlib import Path

import pytest

from llmdoctor.server.model_store import ResolvedModel, resolve_model
from tests.adapters import ALL_LINEAR, CHEERFUL, PIRATE, QV, TERSE, chat_texts, train_lora_adapter


@pytest.fixture(scope="session")
def embedded_model() -> ResolvedModel:
    """The converted embedded default (SmolLM2-135M-Instruct, float32 safetensors folder)."""
    return resolve_model(None)


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory) -> Path:
    """An empty folder to serve as --adapter-root; the adapter fixtures below live in it."""
    return tmp_path_factory.mktemp("adapter_root")


def _train_fixture_adapter(model: ResolvedModel, folder: Path, pairs, kind: str, modules, dimension: str) -> Path:
    texts = chat_texts(model.folder, pairs)
    return train_lora_adapter(
        model.folder, folder, texts, kind, model.name, target_modules=modules, dimension=dimension
    )


@pytest.fixture(scope="session")
def doctor_adapter_dir(embedded_model, adapter_root) -> Path:
    """Doctor, r 8 on q_proj/v_proj, trained toward cheerful replies ("I love this! ...")."""
    return _train_fixture_adapter(embedded_model, adapter_root / "cheerful", CHEERFUL, "doctor", QV, "cheerful")


@pytest.fixture(scope="session")
def second_doctor_adapter_dir(embedded_model, adapter_root) -> Path:
    """Doctor, r 8 on all seven linear projections, trained toward one-word replies ("Four.")."""
    return _train_fixture_adapter(embedded_model, adapter_root / "terse", TERSE, "doctor", ALL_LINEAR, "terse")


@pytest.fixture(scope="session")
def patient_adapter_dir(embedded_model, adapter_root) -> Path:
    """Patient adapter, r 8 on q_proj/v_proj, trained toward pirate talk ("Arr, matey! ...")."""
    return _train_fixture_adapter(embedded_model, adapter_root / "pirate", PIRATE, "patient", QV, "pirate")


# ---- end of adapter fixtures --------------------------------------------------------------------


# ---- live server fixtures: the real `llmdoctor serve` on the embedded model -----------------------
# (owner: HTTP API; helpers in tests/live_server.py)
# One shared server for most HTTP tests (session-scoped: ~5 s to start). It requires an API key, so
# the key tests need no second server, and it serves the cheerful doctor and the pirate patient
# adapter from the start; `adapter_root` is its --adapter-root for hot-load tests.
from tests.live_server import LiveServer, start_server  # noqa: E402

LIVE_API_KEY = "test-key"


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, adapter_root, doctor_adapter_dir, patient_adapter_dir) -> LiveServer:
    args = [
        "--max-batch", "8",
        "--adapter-root", str(adapter_root),
        "--doctor", f"cheerful={doctor_adapter_dir}",
        "--lora", f"pirate={patient_adapter_dir}",
    ]
    server = start_server(args, tmp_path_factory.mktemp("live") / "server.log", api_key=LIVE_API_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openai_client(live_server):
    """The official openai client pointed at the shared live server."""
    return live_server.openai()


# ---- end of live server fixtures ----------------------------------------------------------------
