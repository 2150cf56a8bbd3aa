"""CompletionLog: records queued on the caller's thread, written in batches by one writer thread."""

import logging
import sqlite3
import time
from datetime import timedelta

from sqlalchemy import event, func, select

from llmdoctor.server.feedback.completion_log import CompletionLog, CompletionRecord
from llmdoctor.server.feedback.database import open_database
from llmdoctor.server.feedback.models import Completion, guidance_key, new_completion_id, prompt_key, utc_now
from tests.server.feedback.rows import MESSAGES

GUIDANCE = {"alpha": 1.0, "doctors": [{"name": "positivity", "beta": 2.0, "mode": "product"}], "explain": False,
            "max_kl": None}


def record(choice_index: int = 0, request_id: str = "chatcmpl-1", **fields) -> CompletionRecord:
    created = utc_now()
    values = dict(
        id=new_completion_id(), request_id=request_id, choice_index=choice_index, endpoint="chat", prompt=MESSAGES,
        output_text="What a lovely day!", output_token_ids=[1, 22, 333], model="SmolLM2-135M-Instruct",
        patient_adapter=None, guidance=GUIDANCE, sampling={"temperature": 0.7, "seed": 3}, finish_reason="stop",
        status="finished", created_at=created, finished_at=created + timedelta(seconds=1),
    )
    return CompletionRecord(**{**values, **fields})


def count_rows(db) -> int:
    with db.read_session() as session:
        return session.scalar(select(func.count()).select_from(Completion))


def count_commits(db) -> list[int]:
    """A list that grows by one per transaction the database's engine commits."""
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda connection: commits.append(1))
    return commits


def test_completion_log_writes_the_record_with_its_keys(feedback_url):
    one = record(patient_adapter="pirate")
    log = CompletionLog(open_database(feedback_url))
    log.add(one)
    log.close()
    with open_database(feedback_url) as db, db.read_session() as session:
        row = session.get(Completion, one.id)
        assert (row.request_id, row.choice_index, row.output_text, row.output_token_ids) == \
            ("chatcmpl-1", 0, "What a lovely day!", [1, 22, 333])
        assert row.prompt == MESSAGES and row.prompt_key == prompt_key(MESSAGES)
        assert row.guidance == GUIDANCE and row.guidance_key == guidance_key(GUIDANCE, "pirate") == \
            "adapter=pirate,positivity@2"
        assert (row.created_at, row.finished_at) == (one.created_at, one.finished_at)


def test_completion_log_batches_many_records_into_few_transactions(feedback_url):
    log = CompletionLog(open_database(feedback_url), batch_size=50, flush_seconds=0.5)
    commits = count_commits(log.database)
    for i in range(200):
        log.add(record(choice_index=i))
    log.close()
    assert log.written == 200 and 4 <= len(commits) <= 10  # 200 rows / 50 per batch, some batches cut short
    with open_database(feedback_url) as db:
        assert count_rows(db) == 200


def test_completion_log_close_writes_everything_still_queued(feedback_url):
    log = CompletionLog(open_database(feedback_url), flush_seconds=30)  # no timed flush would happen in time
    for i in range(5):
        log.add(record(choice_index=i))
    started = time.monotonic()
    log.close()
    assert time.monotonic() - started < 20  # closing does not wait for the flush deadline
    with open_database(feedback_url) as db:
        assert count_rows(db) == 5


def test_completion_log_flushes_a_lone_record_within_the_flush_interval(feedback_url):
    log = CompletionLog(open_database(feedback_url), flush_seconds=0.2)
    try:
        log.add(record())
        deadline = time.monotonic() + 10
        while log.written == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.written == 1
    finally:
        log.close()


def test_completion_log_failed_write_is_logged_with_its_count_and_the_writer_goes_on(feedback_url, caplog):
    first = record()
    lost = []
    log = CompletionLog(open_database(feedback_url), flush_seconds=0.1,
                        on_lost=lambda reason, count: lost.append((reason, count)))
    log.add(first)
    _wait_for(lambda: log.written == 1)
    with caplog.at_level(logging.ERROR, logger="llmdoctor.server.feedback.completion_log"):
        log.add(record(id=first.id, choice_index=1))  # the same primary key: the database refuses the row
        _wait_for(lambda: log.lost == 1)
    log.add(record(choice_index=2))
    log.close()
    assert log.written == 2 and lost == [("write_failed", 1)]
    assert "writing 1 row(s) to" in caplog.text and "they are lost (1 lost so far)" in caplog.text
    with open_database(feedback_url) as db:
        assert count_rows(db) == 2


def test_completion_log_full_queue_drops_new_records_and_counts_them(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    log = CompletionLog(open_database(url), batch_size=1, max_pending=2)
    blocker = sqlite3.connect(tmp_path / "feedback.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer waits in its first write
    with caplog.at_level(logging.WARNING, logger="llmdoctor.server.feedback.completion_log"):
        for i in range(10):
            log.add(record(choice_index=i))  # never blocks: at most 1 being written + 2 queued
    assert log.dropped >= 7 and "row(s) dropped so far" in caplog.text
    blocker.execute("ROLLBACK")
    blocker.close()
    log.close()
    assert log.written == 10 - log.dropped
    with open_database(url) as db:
        assert count_rows(db) == log.written


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()
