"""`llmdoctor serve --log-completions / --feedback-db`: every choice served carries a completion_id and
is logged, streams included (when they end, or cut off as "aborted"); refused starts name the flag."""

import json
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from llmdoctor.server.api.app import create_app
from llmdoctor.server.config import ServerSettings
from llmdoctor.server.feedback.database import default_url, downgrade, open_database, upgrade
from llmdoctor.server.feedback.models import COMPLETION_ID_PREFIX, Completion, guidance_key, prompt_key
from tests.live_server import LiveServer, free_port, start_server

MESSAGES = [{"role": "user", "content": "Say something nice about the sea."}]
GUIDANCE = {"alpha": 1.0, "doctors": [{"name": "positivity", "beta": 1.0, "mode": "product"}], "explain": False,
            "max_kl": None}
LONG = {"prompt": "Write a very long story about a dragon.", "max_tokens": 1000, "ignore_eos": True}


def model_cache(tmp_path, embedded_model):
    """A fresh --cache-dir that reuses the converted embedded model (no second conversion)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(embedded_model.folder.parent)
    return cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, embedded_model):
    return model_cache(tmp_path_factory.mktemp("logging"), embedded_model)


@pytest.fixture(scope="module")
def logging_server(cache_dir, patient_adapter_dir) -> LiveServer:
    """--log-completions without --feedback-db: the database is the default one, in --cache-dir."""
    args = ["--log-completions", "--cache-dir", str(cache_dir), "--max-batch", "8", "--lora",
            f"pirate={patient_adapter_dir}"]
    server = start_server(args, cache_dir / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def db_url(logging_server, cache_dir) -> str:
    return default_url(cache_dir)


def logged_rows(url: str, request_id: str, count: int, timeout: float = 30.0) -> list[Completion]:
    """The request's rows in choice order, once `count` of them are written (the log writes in the background)."""
    deadline = time.monotonic() + timeout
    with open_database(url) as db:
        while True:
            with db.read_session() as session:
                rows = list(session.scalars(select(Completion).where(Completion.request_id == request_id)
                                            .order_by(Completion.choice_index)))
            if len(rows) >= count or time.monotonic() > deadline:
                assert len(rows) == count, f"{len(rows)} row(s) of {request_id} logged, expected {count}"
                return rows
            time.sleep(0.1)


def total_rows(url: str) -> int:
    with open_database(url) as db, db.read_session() as session:
        return session.scalar(select(func.count()).select_from(Completion))


def sse_chunks(response: httpx.Response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def assert_distinct_ids(ids: list[str]) -> None:
    assert len(set(ids)) == len(ids) and all(i.startswith(COMPLETION_ID_PREFIX) for i in ids)


# ------------------------------------------------------------------ what is logged


def test_chat_choices_carry_completion_ids_and_their_rows_hold_the_request(logging_server, db_url):
    body = {"messages": MESSAGES, "n": 2, "max_tokens": 6, "temperature": 0.8, "top_k": 40, "seed": 5,
            "guidance": {"doctors": {"positivity": 1.0}}}
    with logging_server.client() as http:
        response = http.post("/v1/chat/completions", json=body).json()
    choices = response["choices"]
    assert_distinct_ids([c["completion_id"] for c in choices])
    rows = logged_rows(db_url, response["id"], 2)
    for choice, row in zip(choices, rows):
        assert (row.id, row.choice_index, row.endpoint) == (choice["completion_id"], choice["index"], "chat")
        assert row.prompt == MESSAGES and row.prompt_key == prompt_key(MESSAGES)
        assert row.output_text == choice["message"]["content"]
        assert (row.finish_reason, row.status) == (choice["finish_reason"], "finished")
        assert (row.model, row.patient_adapter) == (response["model"], None)
        assert row.guidance == GUIDANCE and row.guidance_key == "positivity@1"
        assert {k: row.sampling[k] for k in ("n", "max_tokens", "temperature", "top_k", "seed")} == \
            {"n": 2, "max_tokens": 6, "temperature": 0.8, "top_k": 40, "seed": 5}
        assert row.created_at <= row.finished_at
    assert sum(len(row.output_token_ids) for row in rows) == response["usage"]["completion_tokens"]


def test_completions_with_two_prompts_log_each_choice_with_its_own_prompt(logging_server, db_url):
    body = {"prompt": ["The sea is", "Ships are"], "n": 2, "max_tokens": 4, "model": "pirate", "stop": ["\n"]}
    with logging_server.client() as http:
        response = http.post("/v1/completions", json=body).json()
    assert_distinct_ids([c["completion_id"] for c in response["choices"]])
    rows = logged_rows(db_url, response["id"], 4)
    assert [row.prompt for row in rows] == ["The sea is", "The sea is", "Ships are", "Ships are"]
    assert [row.output_text for row in rows] == [c["text"] for c in response["choices"]]
    assert [row.id for row in rows] == [c["completion_id"] for c in response["choices"]]
    assert sum(len(row.output_token_ids) for row in rows) == response["usage"]["completion_tokens"]
    row = rows[0]
    assert (row.endpoint, row.model, row.patient_adapter, row.guidance) == ("completions", "pirate", "pirate", None)
    assert row.guidance_key == guidance_key(None, "pirate") == "adapter=pirate,patient"
    assert row.sampling["stop"] == ["\n"] and row.sampling["max_tokens"] == 4


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/completions", {"prompt": "The sea is"}),
], ids=["chat", "completions"])
def test_stream_names_each_choice_in_its_first_chunk_and_logs_it_after_the_end(logging_server, db_url, path, body):
    body = {**body, "n": 2, "max_tokens": 5, "stream": True}
    with logging_server.client() as http, http.stream("POST", path, json=body) as response:
        chunks = sse_chunks(response)
    first_ids, texts = {}, {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["index"] not in first_ids:
                first_ids[choice["index"]] = choice["completion_id"]  # the first chunk of a choice names it
            else:
                assert "completion_id" not in choice
            texts[choice["index"]] += choice.get("text") or choice.get("delta", {}).get("content") or ""
    assert_distinct_ids([first_ids[0], first_ids[1]])
    rows = logged_rows(db_url, chunks[0]["id"], 2)
    assert [(row.id, row.output_text, row.status) for row in rows] == \
        [(first_ids[0], texts[0], "finished"), (first_ids[1], texts[1], "finished")]


def test_stream_the_client_leaves_is_logged_as_aborted_with_its_partial_text(logging_server, db_url):
    with logging_server.client() as http, http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()  # keep a reference: dropping the iterator closes the connection
        chunks = [json.loads(next(line for line in lines if line).removeprefix("data: ")) for _ in range(3)]
    received = "".join(c["choices"][0]["text"] for c in chunks)
    [row] = logged_rows(db_url, chunks[0]["id"], 1)
    assert row.id == chunks[0]["choices"][0]["completion_id"]
    assert (row.status, row.finish_reason) == ("aborted", None)
    assert row.output_text.startswith(received) and 3 <= len(row.output_token_ids) < LONG["max_tokens"]


def test_refused_request_is_not_logged(logging_server, db_url):
    before = total_rows(db_url)
    with logging_server.client() as http:
        response = http.post("/v1/chat/completions", json={"messages": MESSAGES, "n": 2,
                                                           "guidance": {"doctors": {"nobody": 1.0}}})
    assert response.status_code == 404
    time.sleep(1.0)  # several flush intervals
    assert total_rows(db_url) == before


def test_metrics_count_the_logged_completions(logging_server, db_url):
    logged = logging_server.metric("llmdoctor_completions_logged_total")
    assert logged > 0 and logged <= total_rows(db_url)


# ------------------------------------------------------------------ on or off, and refused starts


def test_logging_off_gives_no_completion_id_and_creates_no_database(tmp_path, embedded_model):
    cache = model_cache(tmp_path, embedded_model)
    app = create_app(ServerSettings(cache_dir=cache, max_batch=2, default_doctors=False))
    with TestClient(app) as client:
        chat = client.post("/v1/chat/completions", json={"messages": MESSAGES, "n": 2, "max_tokens": 2}).json()
        stream = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "stream": True}).text
    assert [c.get("completion_id", "absent") for c in chat["choices"]] == ["absent", "absent"]
    assert "completion_id" not in stream
    assert not (cache / "feedback.db").exists()


def test_postgresql_feedback_db_round_trip(postgres_cluster, tmp_path, embedded_model):
    name = f"served_{int(time.time() * 1000)}"
    with postgres_cluster.admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = postgres_cluster.url(name)
    server = start_server(["--feedback-db", url, "--no-default-doctors"], tmp_path / "server.log")
    try:
        with server.client() as http:
            response = http.post("/v1/chat/completions", json={"messages": MESSAGES, "n": 2, "max_tokens": 4}).json()
        rows = logged_rows(url, response["id"], 2)
        assert [(r.id, r.output_text, r.status) for r in rows] == \
            [(c["completion_id"], c["message"]["content"], "finished") for c in response["choices"]]
        assert sum(len(r.output_token_ids) for r in rows) == response["usage"]["completion_tokens"]
    finally:
        server.stop()
        with postgres_cluster.admin() as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def serve_fails(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "llmdoctor.server.cli", "serve", "--port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_serve_refuses_an_outdated_database_naming_the_upgrade_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    upgrade(url)
    downgrade(url, "base")  # a database this release's schema is ahead of
    done = serve_fails("--feedback-db", url)
    assert done.returncode == 2
    assert "llmdoctor serve: --feedback-db: " in done.stderr and f"llmdoctor db upgrade --db {url}" in done.stderr


def test_serve_refuses_a_bad_url_naming_the_flag(tmp_path):
    done = serve_fails("--feedback-db", "mysql://ann:secret@db/feedback")
    assert done.returncode == 2 and "secret" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("llmdoctor serve: --feedback-db: mysql://ann:***@db/")
    assert "unsupported backend 'mysql'" in done.stderr
